"""The demo's record application: an HTTP service whose only state is on a replicated volume.

It is what the cluster keeps available (the top of the hierarchy [replicated-volume -> ip ->
app]); run by the `process` agent as `python -m ophiura.demo.app --listen H:P --nbd H:P ...`.

On-volume layout, so that a freshly started copy on another node finds everything that was
acknowledged before a failover without any other state:

    offset 0        header block (4 KiB): magic, version, slot size
    offset 4096+    slot i at 4096 + i * 512:
                    magic "OPHR" | u32 slot | u32 length | u32 crc32c(slot|payload) | JSON

A POST takes the next free slot, writes it with FUA and answers 200 only after the HE says the
write is durable on a quorum of SEs: an acknowledged record is on the volume. At start the
index is rebuilt by scanning slots; a failed write leaves an empty slot behind, so the scan
stops only after more empty slots in a row than writes can be in flight at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import struct
import time
from typing import Any

import google_crc32c
from aiohttp import web

from ophiura.nbd.client import NbdClient, NbdClientError, NbdError
from ophiura.serve import stop_on_signals

log = logging.getLogger("ophiura.demo.app")

HEADER = struct.Struct(">4sII")  # magic, version, slot size
HEADER_MAGIC = b"OPHD"
HEADER_SIZE = 4096
SLOT = 512
SLOT_HEAD = struct.Struct(">4sIII")  # magic, slot index, payload length, crc32c
SLOT_MAGIC = b"OPHR"
MAX_PAYLOAD = SLOT - SLOT_HEAD.size
IN_FLIGHT = 16  # writes at once; the scan's stopping gap is larger than this
SCAN_GAP = 4 * IN_FLIGHT
SCAN_CHUNK = 256 * 1024


class RecordError(Exception):
    """A record that cannot be stored (too big, volume full, the volume refused the write)."""


def encode_slot(index: int, record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":")).encode()
    if len(payload) > MAX_PAYLOAD:
        raise RecordError(f"record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    crc = google_crc32c.value(struct.pack(">I", index) + payload)
    return (SLOT_HEAD.pack(SLOT_MAGIC, index, len(payload), crc) + payload).ljust(SLOT, b"\0")


def decode_slot(index: int, raw: bytes) -> dict[str, Any] | None:
    """The record in a slot, or None for an empty, torn or foreign one (the CRC says which)."""
    magic, idx, length, crc = SLOT_HEAD.unpack_from(raw)
    if magic != SLOT_MAGIC or idx != index or length > MAX_PAYLOAD:
        return None
    payload = raw[SLOT_HEAD.size : SLOT_HEAD.size + length]
    if google_crc32c.value(struct.pack(">I", index) + payload) != crc:
        return None
    return json.loads(payload)


def slot_offset(index: int) -> int:
    return HEADER_SIZE + index * SLOT


class RecordStore:
    """Records in fixed slots on an NBD export; the index lives in memory, rebuilt at start."""

    def __init__(self, client: NbdClient) -> None:
        self.client = client
        self.index: dict[str, tuple[int, str]] = {}  # record id -> (slot, data)
        self.next_slot = 0
        self.free: list[int] = []  # slots whose write failed: reused first, so holes stay small
        self.capacity = (client.size - HEADER_SIZE) // SLOT
        self.limit = asyncio.Semaphore(IN_FLIGHT)
        self.recovered = 0
        self.recovered_in = 0.0

    async def open(self) -> None:
        t0 = time.monotonic()
        head = await self.client.read(0, HEADER.size)
        magic, version, slot = HEADER.unpack(head)
        if magic != HEADER_MAGIC:
            if head.strip(b"\0"):
                raise RecordError("the volume holds something else (no demo header)")
            await self.client.write(
                0, HEADER.pack(HEADER_MAGIC, 1, SLOT).ljust(512, b"\0"), fua=True
            )
        elif (version, slot) != (1, SLOT):
            raise RecordError(f"unsupported layout version {version} slot {slot}")
        await self._scan()
        self.recovered = len(self.index)
        self.recovered_in = time.monotonic() - t0

    async def _scan(self) -> None:
        empty_run, index = 0, 0
        per_chunk = SCAN_CHUNK // SLOT
        while index < self.capacity and empty_run <= SCAN_GAP:
            n = min(per_chunk, self.capacity - index)
            raw = await self.client.read(slot_offset(index), n * SLOT)
            for i in range(n):
                rec = decode_slot(index + i, raw[i * SLOT : (i + 1) * SLOT])
                if rec is None:
                    empty_run += 1
                    continue
                empty_run = 0
                self.index[str(rec["id"])] = (index + i, str(rec["data"]))
                self.next_slot = index + i + 1
            index += n

    async def put(self, record_id: str, data: str) -> int:
        if record_id in self.index:
            return self.index[record_id][0]
        async with self.limit:
            if self.free:
                slot = self.free.pop()
            elif self.next_slot < self.capacity:
                slot = self.next_slot
                self.next_slot += 1  # taken before the await: concurrent puts differ
            else:
                raise RecordError("volume full")
            raw = encode_slot(slot, {"id": record_id, "data": data, "t": round(time.time(), 3)})
            try:
                await self.client.write(slot_offset(slot), raw, fua=True)
            except BaseException:
                # never acknowledged, so whatever landed there may be overwritten; reusing the
                # slot keeps the run of empty slots shorter than the scan's stopping gap
                self.free.append(slot)
                raise
        self.index[record_id] = (slot, data)
        return slot


class App:
    def __init__(self, node: str, nbd: tuple[str, int], export: str) -> None:
        self.node = node
        self.nbd = nbd
        self.export = export
        self.store: RecordStore | None = None
        self.lost = asyncio.Event()
        self.started = time.time()

    async def connect(self, timeout: float = 20.0) -> None:
        """Attach to the HE's NBD export (retried: the HE may still be starting its frontends)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = await NbdClient.connect(*self.nbd, self.export)
                break
            except (OSError, NbdClientError) as exc:
                if time.monotonic() > deadline:
                    raise RecordError(f"NBD {self.nbd[0]}:{self.nbd[1]}: {exc}") from exc
                await asyncio.sleep(0.1)
        store = RecordStore(client)
        await store.open()
        self.store = store
        log.info(
            "node %s: %d records recovered from the volume in %.3f s",
            self.node,
            store.recovered,
            store.recovered_in,
        )

    async def post(self, request: web.Request) -> web.Response:
        assert self.store is not None
        try:
            body = await request.json()
            record_id, data = str(body["id"]), str(body["data"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "body must be {id, data}"}, status=400)
        try:
            slot = await self.store.put(record_id, data)
        except RecordError as exc:
            return web.json_response({"error": str(exc)}, status=507)
        except NbdError as exc:  # read-only (fewer than Q SEs) or fenced: not acknowledged
            return web.json_response({"error": f"volume: {exc}", "node": self.node}, status=503)
        except (NbdClientError, OSError) as exc:
            # the HE went away under us: exit, so the cluster restarts us (or fails over)
            log.error("node %s: NBD connection lost: %s", self.node, exc)
            self.lost.set()
            return web.json_response({"error": f"volume: {exc}", "node": self.node}, status=503)
        return web.json_response({"id": record_id, "slot": slot, "node": self.node})

    async def get_one(self, request: web.Request) -> web.Response:
        assert self.store is not None
        hit = self.store.index.get(request.match_info["rid"])
        if hit is None:
            return web.json_response({"error": "no such record", "node": self.node}, status=404)
        return web.json_response({"id": request.match_info["rid"], "slot": hit[0], "data": hit[1]})

    async def get_all(self, request: web.Request) -> web.Response:
        assert self.store is not None
        records = [[rid, data] for rid, (_, data) in self.store.index.items()]
        return web.json_response({"node": self.node, "count": len(records), "records": records})

    async def health(self, request: web.Request) -> web.Response:
        assert self.store is not None
        return web.json_response(
            {
                "node": self.node,
                "count": len(self.store.index),
                "recovered": self.store.recovered,
                "recovered_in_s": round(self.store.recovered_in, 4),
                "up_s": round(time.time() - self.started, 3),
            }
        )


async def serve(args: argparse.Namespace) -> None:
    host, port = args.listen.rsplit(":", 1)
    nhost, nport = args.nbd.rsplit(":", 1)
    app = App(args.node, (nhost, int(nport)), args.export)
    await app.connect()
    web_app = web.Application()
    web_app.add_routes(
        [
            web.post("/records", app.post),
            web.get("/records", app.get_all),
            web.get("/records/{rid}", app.get_one),
            web.get("/health", app.health),
        ]
    )
    runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, int(port), reuse_address=True).start()
    log.info("node %s: serving records on %s", args.node, args.listen)
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    lost = loop.create_task(app.lost.wait())
    await asyncio.wait([loop.create_task(stop.wait()), lost], return_when=asyncio.FIRST_COMPLETED)
    await runner.cleanup()
    if lost.done():
        raise RecordError("NBD connection lost")
    assert app.store is not None
    with contextlib.suppress(NbdClientError, OSError):
        await app.store.client.disconnect()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="HOST:PORT for HTTP")
    p.add_argument("--nbd", required=True, help="HOST:PORT of this node's HE NBD frontend")
    p.add_argument("--export", default="demo")
    p.add_argument("--node", default="?")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(serve(args))
    except RecordError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
