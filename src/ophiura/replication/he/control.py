"""The HE control API: one JSON object per line over TCP, authenticated with the shared secret.

Why not HTTP: the commands are few (status, takeover, volume admin), the clients are our own
CLI and tests, and a dependency-free protocol keeps the HE small. Why authenticated: `takeover`
and `volume delete` are destructive; whoever holds the SE secret may already do worse, nobody
else may do anything.

    server -> {"ophiura": "he-control", "nonce": HEX}
    client -> {"auth": HMAC-SHA256(secret, "ophiura-he-control" + nonce) in hex}
    server -> {"ok": true}                       (or an error line, then close)
    client -> {"op": "status", ...}
    server -> {"ok": true, "result": ...} | {"ok": false, "error": "..."}

Lines are bounded (`MAX_LINE`), connections are bounded (`max_clients`), and an idle client is
dropped after `idle_timeout`.
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

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
_CONTEXT = b"ophiura-he-control"

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """A control request failed: could not connect, authenticate, or the HE refused it."""


def _proof(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, _CONTEXT + nonce.encode(), hashlib.sha256).hexdigest()


class ControlServer:
    def __init__(
        self,
        handler: Handler,
        secret: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_clients: int = 32,
        idle_timeout: float = 300.0,
    ) -> None:
        self.handler = handler
        self.secret = secret
        self.host = host
        self._port = port
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, self.host, self._port, limit=MAX_LINE
        )
        log.info("HE control API on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        for t in list(self._clients):
            t.cancel()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= self.max_clients:
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            log.debug("control client: %s", exc)
        finally:
            self._clients.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonce = secrets.token_hex(16)
        await _send(writer, {"ophiura": "he-control", "nonce": nonce})
        hello = await _recv(reader, self.idle_timeout)
        if hello is None:  # closed without a word: a port probe, not an authentication failure
            log.debug(
                "control client %s left before authenticating", writer.get_extra_info("peername")
            )
            return
        if not isinstance(hello, dict) or not hmac.compare_digest(
            str(hello.get("auth", "")), _proof(self.secret, nonce)
        ):
            log.warning(
                "control client %s failed authentication", writer.get_extra_info("peername")
            )
            await _send(writer, {"ok": False, "error": "authentication failed"})
            return
        await _send(writer, {"ok": True})
        while True:
            request = await _recv(reader, self.idle_timeout)
            if request is None:
                return
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                await _send(writer, {"ok": False, "error": 'a request is {"op": NAME, ...}'})
                continue
            try:
                result = await self.handler(request)
            except ControlError as exc:
                await _send(writer, {"ok": False, "error": str(exc)})
                continue
            except Exception as exc:  # report every failure to the caller, and log it once
                log.exception("control op %s failed", request.get("op"))
                await _send(writer, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                continue
            await _send(writer, {"ok": True, "result": result})


async def _send(writer: asyncio.StreamWriter, obj: Any) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


async def _recv(reader: asyncio.StreamReader, timeout: float) -> Any:
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        return None
    return json.loads(line)


async def control_call(
    host: str, port: int, secret: bytes, op: str, *, timeout: float = 30.0, **args: Any
) -> Any:
    """One request to an HE's control API; its result, or ControlError saying why not."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
            try:
                hello = await _recv(reader, timeout)
                if not isinstance(hello, dict) or "nonce" not in hello:
                    raise ControlError(f"{host}:{port} is not an ophiura HE control port")
                await _send(writer, {"auth": _proof(secret, str(hello["nonce"]))})
                auth = await _recv(reader, timeout)
                if not isinstance(auth, dict) or not auth.get("ok"):
                    raise ControlError(f"{host}:{port}: authentication failed (wrong secret?)")
                await _send(writer, {"op": op, **args})
                reply = await _recv(reader, timeout)
            finally:
                writer.close()
    except TimeoutError as exc:
        raise ControlError(f"{host}:{port}: no answer to {op!r} within {timeout}s") from exc
    except OSError as exc:
        raise ControlError(f"{host}:{port}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ControlError(f"{host}:{port}: malformed reply: {exc}") from exc
    if not isinstance(reply, dict):
        raise ControlError(f"{host}:{port}: connection closed before answering {op!r}")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request refused")))
    return reply.get("result")
