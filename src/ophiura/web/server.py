"""The HTTP server of one node: an aiohttp AppRunner on the daemon's own event loop.

Same loop as the daemon on purpose: handlers only read in-memory state and call
`NodeDaemon.handle` (a few microseconds); file reads for old events go to a worker thread, so a
request never delays a decision cycle, and no locking is needed around the daemon's state.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ophiura.web.api import Backend, make_app

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, backend: Backend, host: str, port: int) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(make_app(self.backend), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("REST API and dashboard on http://%s:%d/", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
