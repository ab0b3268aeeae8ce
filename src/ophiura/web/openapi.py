"""The OpenAPI 3.0 document served at /api/v1/openapi.json (written by hand: a dozen endpoints)."""

from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}


def _op(
    summary: str,
    *,
    body: dict[str, Any] | None = None,
    path_param: str | None = None,
    ok: str = "The request was accepted; the admin state follows.",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": ok, "content": {"application/json": {"schema": {}}}},
            "400": _ERR,
            "401": _ERR,
            "403": _ERR,
            "404": _ERR,
            "409": _ERR,
        },
    }
    if path_param:
        op["parameters"] = [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": path_param,
            }
        ]
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return {"post": op}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _observability(hier: str) -> dict[str, Any]:
    """/metrics (token, any role) and the token-free probes of ophiura.web.probes."""
    probe = {"security": [], "responses": {}}
    return {
        "/metrics": {
            "get": {
                "summary": "Prometheus text format 0.0.4 (docs/operations.md lists the metrics)",
                "responses": {"200": _text("the exposition"), "401": _ERR},
            }
        },
        "/health": {
            "get": {
                **probe,
                "summary": "For load balancers, no token: is this node online (or in standby)?",
                "responses": {
                    "200": _text("`online` or `standby`"),
                    "503": _text("the node's state: starting, no-quorum, leaving"),
                },
            }
        },
        "/hierarchy/{name}": {
            "get": {
                **probe,
                "summary": "For load balancers, no token: does the hierarchy run on this node? "
                "An unknown name answers as one not running here.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": hier,
                    }
                ],
                "responses": {
                    "200": _text("`running`"),
                    "503": _text("`not running here`"),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    hier = "hierarchy name (as in the cluster TOML)"
    node = "node name (as in the cluster TOML)"
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "ophiura cluster REST API",
            "version": "1",
            "description": (
                "Served by every `ophiura node` with an http address. Actions go through the "
                "same function as the line-JSON admin API and are gossiped to every node, so "
                "any node can be asked. Authenticate with `Authorization: Bearer TOKEN`: the "
                "cluster token (`ophiura web token`) or a user's token (cluster.api_users)."
            ),
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/status": {
                "get": {
                    "summary": "Cluster status: the same JSON as `ophiura cluster status --json`",
                    "responses": {"200": {"description": "status"}, "401": _ERR},
                }
            },
            "/api/v1/whoami": {
                "get": {
                    "summary": "The authenticated user, its role and the node answering",
                    "responses": {"200": {"description": "name, role, node"}, "401": _ERR},
                }
            },
            "/api/v1/events": {
                "get": {
                    "summary": "This node's event log: the newest `limit` events after `since`",
                    "parameters": [
                        {
                            "name": "since",
                            "in": "query",
                            "schema": {"type": "number"},
                            "description": "Unix time, exclusive (default 0)",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                            "description": "at most this many (default 100)",
                        },
                    ],
                    "responses": {
                        "200": {"description": "events, oldest first"},
                        "400": _ERR,
                        "401": _ERR,
                    },
                }
            },
            "/api/v1/hierarchies/{name}/switchover": _op(
                "Move a hierarchy to a node (completes asynchronously: poll status until "
                "running_on == [to] and switchover is null)",
                body={
                    "type": "object",
                    "required": ["to"],
                    "properties": {"to": {"type": "string", "description": node}},
                },
                path_param=hier,
            ),
            "/api/v1/hierarchies/{name}/freeze": _op(
                "Lock a hierarchy where it is", path_param=hier
            ),
            "/api/v1/hierarchies/{name}/unfreeze": _op(
                "Let the cluster manage it again", path_param=hier
            ),
            "/api/v1/hierarchies/{name}/cleanup": _op(
                "Clear its fail counts on every node (stop-failed: you assert it is down)",
                path_param=hier,
            ),
            "/api/v1/nodes/{name}/standby": _op(
                "Move everything off a node and keep it off", path_param=node
            ),
            "/api/v1/nodes/{name}/online": _op("Let a node run hierarchies again", path_param=node),
            "/api/v1/maintenance": _op(
                "Cluster-wide maintenance mode: no recovery (monitoring continues)",
                body={
                    "type": "object",
                    "required": ["on"],
                    "properties": {"on": {"type": "boolean"}},
                },
            ),
        }
        | _observability(hier),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "400 bad input, 401 no or bad token, 403 read-only user, "
                    "404 unknown hierarchy or node, 409 refused in the current state",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "error": {"type": "string"},
                                    "status": {"type": "integer"},
                                },
                            }
                        }
                    },
                }
            },
        },
    }
