"""Finding the Agent for a resource kind.

Every kind goes to the agents registry (`ophiura.cluster.agents.registry.agent_for`), except
`python:MODULE:ATTR`, which loads a site-local agent class (or factory) from an importable
module: the escape hatch for an in-house agent written in Python, and how the cluster's own tests
plug an agent into separate `ophiura node` processes.
"""

from __future__ import annotations

import importlib
from typing import Any

from ophiura.cluster.agents.base import Agent


class AgentLookupError(Exception):
    """No agent serves this kind; the message says why."""


_cache: dict[str, Agent] = {}


def _python_agent(kind: str) -> Agent:
    _, _, spec = kind.partition(":")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AgentLookupError(f"agent kind {kind!r}: expected python:MODULE:ATTR")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentLookupError(f"agent kind {kind!r}: cannot import {module_name}: {exc}") from exc
    factory: Any = getattr(module, attr, None)
    if factory is None:
        raise AgentLookupError(f"agent kind {kind!r}: {module_name} has no {attr}")
    agent = factory() if callable(factory) else factory
    for method in ("start", "stop", "monitor"):
        if not callable(getattr(agent, method, None)):
            raise AgentLookupError(f"agent kind {kind!r}: {attr} has no {method}()")
    return agent


def agent_for(kind: str) -> Agent:
    """The (cached) agent for `kind`; AgentLookupError if there is none."""
    agent = _cache.get(kind)
    if agent is not None:
        return agent
    if kind.startswith("python:"):
        agent = _python_agent(kind)
    else:
        try:
            from ophiura.cluster.agents import registry
        except ImportError as exc:
            raise AgentLookupError(
                f"agent kind {kind!r}: the agents registry is not available ({exc})"
            ) from exc
        try:
            agent = registry.agent_for(kind)
        except (KeyError, LookupError, ValueError) as exc:
            raise AgentLookupError(f"unknown agent kind {kind!r}: {exc}") from exc
    _cache[kind] = agent
    return agent


def check_kind(kind: str) -> str | None:
    """None if `kind` has an agent, else a sentence saying why not (for validate())."""
    try:
        agent_for(kind)
    except AgentLookupError as exc:
        return str(exc)
    return None
