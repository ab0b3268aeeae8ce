"""Admin API: HMAC challenge authentication."""

from __future__ import annotations

from typing import Any

import pytest

from ophiura.cluster.admin import AdminError, AdminServer, call


async def handler(req: dict[str, Any]) -> Any:
    if req.get("op") == "boom":
        raise AdminError("no such thing")
    return {"echo": req}


async def test_authenticated_round_trip() -> None:
    srv = AdminServer(b"k" * 32, "n1", handler)
    await srv.start("127.0.0.1", 0)
    assert srv.server is not None
    port = srv.server.sockets[0].getsockname()[1]
    try:
        assert await call("127.0.0.1", port, b"k" * 32, {"op": "status"}) == {
            "echo": {"op": "status"}
        }
        with pytest.raises(AdminError, match="authentication failed"):
            await call("127.0.0.1", port, b"wrong" * 8, {"op": "status"})
        with pytest.raises(AdminError, match="no such thing"):
            await call("127.0.0.1", port, b"k" * 32, {"op": "boom"})
    finally:
        await srv.stop()


async def test_unreachable() -> None:
    from ophiura.testkit.ports import free_port

    with pytest.raises(AdminError, match="cannot reach"):
        await call("127.0.0.1", free_port(), b"k", {"op": "status"}, timeout=1)
