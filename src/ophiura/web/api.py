"""The REST API (`/api/v1/...`) and the dashboard's static files, as an aiohttp application.

Every action is a request to `Backend.handle` — the function behind the line-JSON admin API — so
there is one implementation of the cluster's admin logic. This layer only turns HTTP into those
requests: authentication, input checking (400 naming the problem, 404 for an unknown hierarchy
or node), and JSON out. What the handler still refuses after those checks is a conflict with the
cluster's state (a frozen hierarchy), answered 409.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ophiura.cluster.admin import AdminError
from ophiura.cluster.config import ClusterConfig
from ophiura.cluster.events import EventLog, RateLimiter
from ophiura.web import eventlog, probes
from ophiura.web.auth import Authenticator, Principal
from ophiura.web.openapi import document

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
PUBLIC = frozenset({"/", "/api/v1/openapi.json"})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Backend(Protocol):
    """What the API needs from a node daemon (NodeDaemon satisfies it; tests may fake it)."""

    cfg: ClusterConfig
    me: str
    events: EventLog

    async def handle(self, req: dict[str, Any]) -> Any: ...

    def emit(self, kind: str, **fields: Any) -> None: ...


BACKEND: web.AppKey[Backend] = web.AppKey("backend")
AUTH = web.AppKey("auth", Authenticator)


def problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


def dumps(obj: Any) -> web.Response:
    """JSON exactly as the admin API encodes it, so REST status == `cluster status --json`."""
    return web.Response(text=json.dumps(obj, default=str), content_type="application/json")


# -- middlewares ------------------------------------------------------------------------------


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors under /api (404, 405, 413 ...), security headers everywhere."""
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        resp = problem(exc.status, exc.reason if exc.status != 404 else f"no {request.path}")
        if exc.status == 405:
            resp.headers["Allow"] = exc.headers.get("Allow", "")
    resp.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


def authenticate(auth: Authenticator, backend: Backend) -> Any:
    limiter = RateLimiter(5.0)  # a scan must not flood the log or the event log

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bearer token for /api/v1 (but the OpenAPI document) and /metrics; 401 logged, 403 for
        read-only. The dashboard's files and the health probes (probes.py) are public."""
        needs_token = request.path.startswith("/api/") or request.path == probes.METRICS_PATH
        if request.path in PUBLIC or not needs_token:
            return await handler(request)
        who = auth.check(request.headers.get("Authorization"))
        remote = request.remote or "?"
        if who is None:
            why = "no token" if "Authorization" not in request.headers else "bad token"
            if limiter.allow(why):  # keyed by reason only: bounded whatever the clients
                log.warning(
                    "REST %s %s from %s refused: %s", request.method, request.path, remote, why
                )
                backend.emit(
                    "security",
                    task="api-refused",
                    desc=f"{request.method} {request.path} from {remote}: {why}",
                )
            resp = problem(401, f"authentication required ({why}): Authorization: Bearer TOKEN")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="ophiura"'
            return resp
        if request.method != "GET" and not who.may_act:
            return problem(403, f"user {who.name} has the read role: actions need admin")
        return await handler(request)

    return middleware


# -- handlers ---------------------------------------------------------------------------------


def _backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


def _principal(request: web.Request) -> Principal:
    """Who asked (the middleware already refused anyone else; checking again costs ~1 us)."""
    who = request.app[AUTH].check(request.headers.get("Authorization"))
    if who is None:
        raise web.HTTPUnauthorized()
    return who


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object in the body ({} if empty); 400 naming the problem otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadInput(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadInput(f"the body must be a JSON object, not {type(body).__name__}")
    return body


class ApiError(Exception):
    """An answer other than 200 whose message names the problem."""

    status = 400


class BadInput(ApiError):
    """400: the request itself is wrong."""


class NotFound(ApiError):
    """404: no such hierarchy or node."""

    status = 404


async def act(request: web.Request, req: dict[str, Any], what: dict[str, Any]) -> web.Response:
    """Run one admin request through the daemon, audit it, answer 200 / 409."""
    backend = _backend(request)
    who = _principal(request)
    try:
        result = await backend.handle(req)
    except AdminError as exc:
        return problem(409, str(exc))
    # The event's own "node" is the node that logs it; the node acted upon goes in "peer".
    audit = {("peer" if k == "node" else k): v for k, v in what.items()}
    desc = f"by {who.name} from {request.remote or '?'}"
    backend.emit("admin", task=f"api-{req['op']}", desc=desc, **audit)
    return dumps({"ok": True, "op": req["op"], "by": who.name, **what, **(result or {})})


async def status(request: web.Request) -> web.Response:
    return dumps(await _backend(request).handle({"op": "status"}))


async def whoami(request: web.Request) -> web.Response:
    who = _principal(request)
    backend = _backend(request)
    return dumps({"name": who.name, "role": who.role, "node": backend.me})


def _number(query: Any, key: str, default: float, lo: float, hi: float) -> float:
    raw = query.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"{key}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise BadInput(f"{key}={raw} is outside {lo:g}..{hi:g}")
    return value


async def events(request: web.Request) -> web.Response:
    """Events after `since` (Unix time, exclusive), the newest `limit` (<= 1000), oldest first."""
    since = _number(request.query, "since", 0.0, 0.0, 1e11)
    limit_f = _number(request.query, "limit", 100, 1, eventlog.MAX_LIMIT)
    if limit_f != int(limit_f):
        raise BadInput(f"limit={request.query['limit']} is not a whole number")
    limit = int(limit_f)
    log_ = _backend(request).events
    recent = log_.last(eventlog.RING_ALL)
    files: list[dict[str, Any]] = []
    if not eventlog.ring_covers(recent, since):
        before = eventlog.event_time(recent[0]) if recent else float("inf")
        files = await asyncio.to_thread(eventlog.from_files, log_.dir, since, before, limit)
    chosen, truncated = eventlog.select(recent, files, since, limit)
    return dumps({"node": _backend(request).me, "events": chosen, "truncated": truncated})


def _hierarchy(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in _backend(request).cfg.hierarchies:
        raise NotFound(f"unknown hierarchy {name!r}")
    return name


def _node(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in _backend(request).cfg.nodes:
        raise NotFound(f"unknown node {name!r}")
    return name


async def switchover(request: web.Request) -> web.Response:
    h = _hierarchy(request)
    body = await _body(request)
    to = body.get("to")
    cfg = _backend(request).cfg
    if to is None:
        raise BadInput(
            f"'to' is missing: the node to move {h} to, one of {cfg.hierarchies[h].nodes}"
        )
    if not isinstance(to, str):
        raise BadInput(f"'to' must be a node name (a string), not {json.dumps(to)}")
    if to not in cfg.nodes:
        raise BadInput(f"'to': unknown node {to!r}")
    if to not in cfg.hierarchies[h].nodes:
        raise BadInput(f"'to': {to} is not in {h}'s priority list {list(cfg.hierarchies[h].nodes)}")
    return await act(
        request, {"op": "switchover", "hierarchy": h, "to": to}, {"hierarchy": h, "to": to}
    )


def _hierarchy_op(op: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        h = _hierarchy(request)
        await _body(request)
        return await act(request, {"op": op, "hierarchy": h}, {"hierarchy": h})

    return handler


def _node_op(op: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        n = _node(request)
        await _body(request)
        return await act(request, {"op": op, "node": n}, {"node": n})

    return handler


async def maintenance(request: web.Request) -> web.Response:
    body = await _body(request)
    on = body.get("on")
    if not isinstance(on, bool):
        raise BadInput(f"'on' must be true or false, not {json.dumps(on)}")
    return await act(request, {"op": "maintenance", "on": on}, {"on": on})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return problem(exc.status, str(exc))


def make_app(backend: Backend) -> web.Application:
    """The application for one node; `backend` is its daemon."""
    auth = Authenticator(backend.cfg)
    app = web.Application(
        client_max_size=MAX_BODY, middlewares=[errors, authenticate(auth, backend), api_errors]
    )
    app[BACKEND] = backend
    app[AUTH] = auth
    r = app.router
    r.add_get("/", index)
    r.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_get("/api/v1/status", status)
    r.add_get("/api/v1/whoami", whoami)
    r.add_get("/api/v1/events", events)
    r.add_post("/api/v1/hierarchies/{name}/switchover", switchover)
    for op in ("freeze", "unfreeze", "cleanup"):
        r.add_post(f"/api/v1/hierarchies/{{name}}/{op}", _hierarchy_op(op))
    for op in ("standby", "online"):
        r.add_post(f"/api/v1/nodes/{{name}}/{op}", _node_op(op))
    r.add_post("/api/v1/maintenance", maintenance)
    probes.add_routes(app, getattr(backend, "metrics", None))
    return app
