"""Every logged failure names its cause (issue 12): an exception whose text is empty is named
by its type, and a timeout says how long was waited (ophiura.causes.describe)."""

from __future__ import annotations

import asyncio

import pytest

from ophiura.causes import describe


async def _expired() -> TimeoutError:
    try:
        async with asyncio.timeout(0):
            await asyncio.sleep(1)
    except TimeoutError as exc:
        return exc
    raise AssertionError("asyncio.timeout(0) did not expire")


async def test_an_expired_asyncio_timeout_names_its_type_and_bound() -> None:
    exc = await _expired()
    assert str(exc) == ""  # what made `SE se1: connection lost: poll: ` empty
    assert describe(exc) == "TimeoutError"
    assert describe(exc, 2.0) == "TimeoutError (no answer within 2 s)"
    assert describe(exc, 0.25) == "TimeoutError (no answer within 0.25 s)"


@pytest.mark.parametrize(
    ("exc", "timeout", "text"),
    [
        (ConnectionResetError(), None, "ConnectionResetError"),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            2.0,
            "[Errno 104] Connection reset by peer",
        ),
        (OSError("   "), None, "OSError"),
        (ValueError("bad frame"), None, "bad frame"),
        (TimeoutError("connect timed out"), 3.0, "connect timed out (no answer within 3 s)"),
    ],
)
def test_describe(exc: BaseException, timeout: float | None, text: str) -> None:
    assert describe(exc, timeout) == text


async def test_an_admin_call_to_a_silent_node_says_it_timed_out() -> None:
    """`ophiura cluster ...` against a node that accepts and never answers (hung daemon)."""
    from ophiura.cluster.admin import AdminError, call

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(AdminError) as err:
            await call("127.0.0.1", port, b"k" * 32, {"op": "status"}, timeout=0.2)
    finally:
        server.close()
        await server.wait_closed()
    assert str(err.value) == (
        f"cannot reach node admin API at 127.0.0.1:{port}: TimeoutError (no answer within 0.2 s)"
    )
