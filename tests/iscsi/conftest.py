"""Fixtures: a live IscsiServer on 127.0.0.1 port 0, backed by the real ScsiTarget when the
SCSI layer provides one, else by the transport-only MiniDevice."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ophiura.iscsi import IscsiServer

from .fakes import MiniDevice

IQN = "iqn.2025-01.org.ophiura:test0"


def make_device(size: int = 64 << 20) -> Any:
    """The real ScsiTarget over a MemoryBlockDevice when available."""
    try:
        from ophiura.block.memory import MemoryBlockDevice
        from ophiura.scsi.target import ScsiTarget
    except ImportError:
        return MiniDevice(blocks=size // 512)
    return ScsiTarget(IQN, {0: MemoryBlockDevice(size)})


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Any]]:
    servers: list[IscsiServer] = []

    async def start(devices: dict[str, Any] | None = None, **kw: Any) -> IscsiServer:
        srv = IscsiServer(devices or {IQN: make_device()}, ("127.0.0.1", 0), **kw)
        await srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.stop()
