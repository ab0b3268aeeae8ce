"""The admin API: line-JSON over TCP, authenticated by an HMAC challenge with the cluster secret.

    server -> {"challenge": HEX, "node": NAME}
    client -> {"request": {...}, "mac": HEX}      mac = HMAC-SHA256(admin key, challenge | request)
    server -> {"ok": true, "result": ...} | {"ok": false, "error": "..."}

The challenge is fresh per connection, so a captured exchange cannot be replayed; the key is
derived for this purpose only (config.key("admin")), so a heartbeat MAC is never a valid admin MAC.
It listens on the node's admin address (127.0.0.1 by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from ophiura.causes import describe

log = logging.getLogger(__name__)

MAX_LINE = 1 << 16
IO_TIMEOUT = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class AdminError(Exception):
    """The request failed; the message is for the operator."""


def _canonical(request: dict[str, Any]) -> bytes:
    return json.dumps(request, sort_keys=True, separators=(",", ":")).encode()


def sign(key: bytes, challenge: str, request: dict[str, Any]) -> str:
    return hmac.new(
        key, challenge.encode() + b"|" + _canonical(request), hashlib.sha256
    ).hexdigest()


class AdminServer:
    def __init__(self, key: bytes, node: str, handler: Handler) -> None:
        self.key = key
        self.node = node
        self.handler = handler
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            challenge = secrets.token_hex(16)
            await self._send(writer, {"challenge": challenge, "node": self.node})
            line = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
            msg = json.loads(line)
            request = msg.get("request") if isinstance(msg, dict) else None
            mac = msg.get("mac") if isinstance(msg, dict) else None
            if not isinstance(request, dict) or not isinstance(mac, str):
                await self._send(writer, {"ok": False, "error": "malformed request"})
                return
            if not hmac.compare_digest(sign(self.key, challenge, request), mac):
                log.warning("admin request from %s refused: bad MAC (wrong cluster secret?)", peer)
                await self._send(writer, {"ok": False, "error": "authentication failed"})
                return
            try:
                result = await self.handler(request)
                await self._send(writer, {"ok": True, "result": result})
            except AdminError as exc:
                await self._send(writer, {"ok": False, "error": str(exc)})
        except (TimeoutError, ValueError, ConnectionError, asyncio.LimitOverrunError) as exc:
            log.info("admin connection from %s: %s", peer, describe(exc, IO_TIMEOUT))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, default=str).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), IO_TIMEOUT)


async def call(
    host: str, port: int, key: bytes, request: dict[str, Any], timeout: float = 10.0
) -> Any:
    """Send one request; the result, or AdminError (also for connection problems)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_LINE), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise AdminError(
            f"cannot reach node admin API at {host}:{port}: {describe(exc, timeout)}"
        ) from exc

    async def line() -> bytes:
        data = await asyncio.wait_for(reader.readline(), timeout)
        if not data:  # the node went away mid-exchange (killed, fenced): not a protocol error
            raise ConnectionResetError("connection closed before the answer")
        return data

    try:
        hello = json.loads(await line())
        challenge = hello["challenge"]
        body = {"request": request, "mac": sign(key, challenge, request)}
        writer.write(json.dumps(body).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await line())
    except (OSError, TimeoutError) as exc:
        # "cannot reach": callers that may ask another node (the CLI) do so
        raise AdminError(
            f"cannot reach node admin API at {host}:{port}: {describe(exc, timeout)}"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise AdminError(f"admin API at {host}:{port}: {describe(exc)}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise AdminError(str(reply.get("error") if isinstance(reply, dict) else reply))
    return reply.get("result")
