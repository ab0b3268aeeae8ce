"""`/metrics` and the health probes for load balancers (`/health`, `/hierarchy/NAME`).

The probes answer without a token, as Patroni's `/health` and `/primary` do, because a load
balancer or keepalived's HTTP check has no way to hold one. They are read-only and say as little
as a status code can: 200 or 503, and a body of one word. An unknown hierarchy name gets the same
503 as a hierarchy that is not running here, so the probes cannot be used to list what the
cluster runs. Everything else under /api/v1 keeps its bearer token, and so does `/metrics`
(any role): it names every node, link and hierarchy; Prometheus sends the token with
`authorization: { credentials_file: ... }` in its scrape configuration.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ophiura.metrics import CONTENT_TYPE

METRICS_PATH = "/metrics"
NO_STORE = {"Cache-Control": "no-store"}


class Observed(Protocol):
    """What the probes need from a daemon (NodeDaemon.metrics, a NodeMetrics, satisfies it)."""

    def node_healthy(self) -> tuple[bool, str]: ...

    def running_here(self, hierarchy: str) -> bool: ...

    def render(self) -> str: ...


OBSERVED: web.AppKey[Observed | None] = web.AppKey("observed")


def _answer(ok: bool, word: str) -> web.Response:
    return web.Response(
        text=word + "\n", status=200 if ok else 503, content_type="text/plain", headers=NO_STORE
    )


async def health(request: web.Request) -> web.Response:
    observed = request.app[OBSERVED]
    if observed is None:
        return _answer(False, "unknown")
    ok, state = observed.node_healthy()
    return _answer(ok, state)


async def hierarchy(request: web.Request) -> web.Response:
    observed = request.app[OBSERVED]
    running = observed is not None and observed.running_here(request.match_info["name"])
    return _answer(running, "running" if running else "not running here")


async def metrics(request: web.Request) -> web.Response:
    observed = request.app[OBSERVED]
    if observed is None:
        raise web.HTTPNotFound()
    text = observed.render()
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE, **NO_STORE})


def add_routes(app: web.Application, observed: Observed | None) -> None:
    app[OBSERVED] = observed
    app.router.add_get("/health", health)  # GET and HEAD; anything else: 405
    app.router.add_get("/hierarchy/{name}", hierarchy)
    app.router.add_get(METRICS_PATH, metrics)
