"""`/metrics` over HTTP for `ophiura he` and `ophiura se` (`--metrics HOST:PORT`), off by default.

Why a listener of its own and not the web API's: the HE and SE have no web API, and their
event loop is the I/O loop, so this is one small aiohttp app on that same loop (a scrape renders
from state the loop owns, with no locking). Security (project rule: authenticate every listener an
attacker could reach): it binds only where asked; on a loopback address it is open (whoever can
reach it is on this host); anywhere else it needs a bearer token read from a file
(`--metrics-token-file`, never given on the command line where `ps` shows it), and refuses to
start without one (`check_listen`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ophiura.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)
PATH = "/metrics"


class MetricsListenError(ValueError):
    """A --metrics address or token file that cannot be served safely."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_listen(host: str, token_file: Path | None) -> None:
    """Refuse an address beyond this host without a token (one line, for the CLI)."""
    if token_file is None and not is_loopback(host):
        raise MetricsListenError(
            f"--metrics {host}: not a loopback address, so scrapes must authenticate: "
            "give --metrics-token-file FILE (a bearer token), or bind 127.0.0.1"
        )


def load_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MetricsListenError(f"--metrics-token-file {path}: {exc}") from exc
    if len(token) < 16 or any(c.isspace() for c in token):
        raise MetricsListenError(
            f"--metrics-token-file {path}: the token must be one word of at least 16 characters"
        )
    return token


class MetricsServer:
    """GET /metrics answers `render()`; with a token, only to `Authorization: Bearer TOKEN`."""

    def __init__(
        self, render: Callable[[], str], host: str, port: int, token_file: Path | None = None
    ) -> None:
        check_listen(host, token_file)
        self.render = render
        self.host = host
        self.port = port
        self.token = load_token(token_file) if token_file is not None else None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PATH, self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:  # the port actually bound (port 0: chosen by the kernel)
            self.port = runner.addresses[0][1]
        auth = "bearer token" if self.token else "no authentication (loopback only)"
        log.info("metrics on http://%s:%d%s (%s)", self.host, self.port, PATH, auth)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            ):
                log.warning("metrics: refused an unauthenticated scrape from %s", request.remote)
                return web.Response(
                    status=401,
                    text="authentication required: Authorization: Bearer TOKEN\n",
                    headers={"WWW-Authenticate": 'Bearer realm="ophiura-metrics"'},
                )
        return web.Response(
            body=self.render().encode(),
            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
        )
