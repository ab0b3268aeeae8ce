"""Fixtures: NBD servers on 127.0.0.1 port 0, in the test's loop (`start_server`) or in a
thread of their own (`threaded_server`) for tests that run blocking external tools."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import pytest

from ophiura.block.device import BlockDevice
from ophiura.nbd.server import NbdServer


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Any]]:
    servers: list[NbdServer] = []

    async def start(exports: Mapping[str, BlockDevice], **kwargs: Any) -> NbdServer:
        server = NbdServer(exports, "127.0.0.1", 0, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=2.0)


class ThreadedServer:
    """An NbdServer on its own event loop in a thread, so a test may block on a subprocess."""

    def __init__(self, exports: Mapping[str, BlockDevice], **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nbd-server", daemon=True)
        self.thread.start()
        self.server = NbdServer(exports, "127.0.0.1", 0, **kwargs)
        self.call(self.server.start())

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    @property
    def port(self) -> int:
        return self.server.port

    def uri(self, export: str = "disk") -> str:
        return f"nbd://127.0.0.1:{self.port}/{export}"

    def close(self) -> None:
        try:
            self.call(self.server.stop(grace=2.0))
            for device in self.server.exports.values():
                self.call(device.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def threaded_server() -> Iterator[Callable[..., ThreadedServer]]:
    started: list[ThreadedServer] = []

    def start(exports: Mapping[str, BlockDevice], **kwargs: Any) -> ThreadedServer:
        server = ThreadedServer(exports, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def require_tools(*tools: str) -> None:
    """Skip, with the reason printed by -ra, when a Debian test tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"missing tool(s): {', '.join(missing)} (apt-get install libnbd-bin nbdkit fio "
            "qemu-utils qemu-block-extra; `make test` does it as root)"
        )
