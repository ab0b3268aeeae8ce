"""HE<->SE links the nemesis can cut: a TCP forwarder per SE, on 127.0.0.1, in this process.

The HEs are configured with the forwarder's port instead of the SE's, so every HE->SE byte
(and the SE->SE recovery pulls, which use the addresses the HE hands out) passes through it.
A cut *holds* a direction: the forwarder stops reading it, the kernel buffers fill and the
sender stalls, as over a real partition (TCP loses nothing; the HE's own timeouts decide that
the SE is gone). `to-se` holds requests, `to-he` holds answers (one-way partitions), `both` is
a two-way partition. New connections are accepted and held the same way.
"""

from __future__ import annotations

import asyncio
import contextlib

from ophiura.torture.processes import free_port

DIRECTIONS = ("to-se", "to-he", "both")


class LinkProxy:
    def __init__(self, name: str, target_port: int) -> None:
        self.name = name
        self.target_port = target_port
        self.port = free_port()
        self.gates = {"to-se": asyncio.Event(), "to-he": asyncio.Event()}
        for gate in self.gates.values():
            gate.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.bytes = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def hold(self, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r}: one of {DIRECTIONS}")
        for d in ("to-se", "to-he") if direction == "both" else (direction,):
            self.gates[d].clear()

    def release(self) -> None:
        for gate in self.gates.values():
            gate.set()

    async def _accept(self, he_r: asyncio.StreamReader, he_w: asyncio.StreamWriter) -> None:
        self._writers.add(he_w)
        try:
            se_r, se_w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), 5
            )
        except (OSError, TimeoutError):
            he_w.close()  # the SE is down: the HE sees a closed connection, as without us
            self._writers.discard(he_w)
            return
        self._writers.add(se_w)
        loop = asyncio.get_running_loop()
        pumps = [
            loop.create_task(self._pump(he_r, se_w, self.gates["to-se"])),
            loop.create_task(self._pump(se_r, he_w, self.gates["to-he"])),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for t in pumps:
            t.cancel()
            self._tasks.discard(t)
        for w in (he_w, se_w):
            w.close()
            self._writers.discard(w)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await gate.wait()
                data = await src.read(1 << 16)
                if not data:
                    return
                await gate.wait()  # a cut that began while we were reading holds this too
                dst.write(data)
                self.bytes += len(data)
                await dst.drain()

    async def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for w in list(self._writers):
            w.close()
        self._tasks.clear()
        self._writers.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
