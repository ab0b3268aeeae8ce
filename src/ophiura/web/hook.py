"""The daemon's only entry into ophiura.web: start the HTTP server if configured, never fail it.

Kept import-light (aiohttp is imported only when an http address is configured) so the cluster
daemon does not pay for the web layer it does not use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ophiura.web.api import Backend

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    @property
    def warning(self) -> str | None: ...  # a listener beyond loopback left open, for status

    async def stop(self) -> None: ...


async def start(daemon: Backend) -> Stoppable | None:
    """Serve the REST API + dashboard on the node's http address; None if off or it failed.

    A failure to listen is logged and recorded as an event, not raised: the REST API is a
    convenience, and a node that refused to run because its dashboard port was taken would
    turn a cosmetic problem into lost availability.
    """
    addr = daemon.cfg.http_address(daemon.me)
    if addr is None:
        return None
    host, port = addr
    tls = daemon.cfg.http_tls(daemon.me)
    try:
        from ophiura.web.server import WebServer, server_tls

        server = WebServer(daemon, host, port, server_tls(*tls) if tls else None)
        await server.start()
    except (OSError, ImportError) as exc:  # ssl.SSLError is an OSError: never plain instead
        log.error("REST API not started on %s:%d: %s", host, port, exc)
        daemon.emit("admin", task="http-failed", desc=f"REST API on {host}:{port}: {exc}")
        return None
    return server
