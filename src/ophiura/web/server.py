"""The HTTP server of one node: an aiohttp AppRunner on the daemon's own event loop.

Same loop as the daemon on purpose: handlers only read in-memory state and call
`NodeDaemon.handle` (a few microseconds); file reads for old events go to a worker thread, so a
request never delays a decision cycle, and no locking is needed around the daemon's state.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path

from aiohttp import web

from ophiura.web.api import Backend, make_app

log = logging.getLogger(__name__)


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """HTTPS with the node's certificate chain and key (PEM); TLS 1.2 at least. A file that is
    missing, unreadable or not a matching pair raises OSError/ssl.SSLError naming it."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise OSError(f"TLS {what} {path}: no such file")
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ssl.SSLError(f"TLS certificate {cert} / key {key}: {exc.reason or exc}") from exc
    return ctx


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class WebServer:
    def __init__(
        self, backend: Backend, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.tls = tls
        self._runner: web.AppRunner | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    async def start(self) -> None:
        runner = web.AppRunner(make_app(self.backend), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self.host, self.port, reuse_address=True, ssl_context=self.tls
            )
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("REST API and dashboard on %s://%s:%d/", self.scheme, self.host, self.port)
        if self.warning:
            log.warning("%s", self.warning)

    @property
    def warning(self) -> str | None:
        """Plain HTTP beyond loopback: tokens cross the network in clear (`cluster status`)."""
        if self.tls is not None or is_loopback(self.host):
            return None
        return (
            f"REST API on {self.host}:{self.port} is plain HTTP: API tokens and cluster state "
            "cross the network in clear; set cluster.http_tls_cert and http_tls_key (docs/web.md)"
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
