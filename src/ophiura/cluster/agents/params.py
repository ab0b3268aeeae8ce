"""Typed access to a resource's string params, and where agents keep their run-time state.

Resource params are strings (they become OCF_RESKEY_* for OCF agents); built-in agents read them
through `Params` so a bad value is one `ParamError` naming the resource, the param and the
problem, which agents turn into ERR_CONFIGURED (OCF: "the configuration is wrong").
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource

_TRUE = {"1", "yes", "true", "on", "y"}
_FALSE = {"0", "no", "false", "off", "n", ""}

# Params the harness itself consumes (not the agent's own): run the action in this network ns.
NETNS = "netns"


class ParamError(ValueError):
    """A resource param is missing or malformed."""

    def __init__(self, resource: str, param: str, problem: str) -> None:
        super().__init__(f"resource {resource!r}: param {param!r} {problem}")
        self.resource = resource
        self.param = param


class Params:
    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.raw = resource.params

    def _err(self, name: str, problem: str) -> ParamError:
        return ParamError(self.resource.name, name, problem)

    def text(self, name: str, default: str | None = None) -> str:
        value = self.raw.get(name)
        if value is None or value == "":
            if default is None:
                raise self._err(name, "is required")
            return default
        return value

    def opt(self, name: str) -> str | None:
        value = self.raw.get(name)
        return value if value else None

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        raw = self.raw.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self._err(name, f"is not a number: {raw!r}") from None
        if value < minimum:
            raise self._err(name, f"must be >= {minimum:g}, not {value:g}")
        return value

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self.raw.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw, 0)
        except ValueError:
            raise self._err(name, f"is not an integer: {raw!r}") from None
        if value < minimum:
            raise self._err(name, f"must be >= {minimum}, not {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.raw.get(name)
        if raw is None:
            return default
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise self._err(name, f"is not a boolean: {raw!r}")

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise self._err(name, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def argv(self, name: str, default: str | None = None) -> list[str]:
        """A command line split like a shell would (no expansion); non-empty."""
        text = self.text(name, default)
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise self._err(name, f"is not a valid command line: {exc}") from None
        if not argv:
            raise self._err(name, "is an empty command line")
        return argv

    @property
    def netns(self) -> str | None:
        return self.opt(NETNS)


def state_dir() -> Path:
    """Where agents keep pidfiles and state (HA_RSCTMP): cleared on reboot, private to the node.

    OPHIURA_RSCTMP wins; as root Debian's own `/run/resource-agents`; otherwise a per-user dir.
    """
    env = os.environ.get("OPHIURA_RSCTMP")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/run/resource-agents")
    else:
        base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/ophiura-{os.getuid()}"
        path = Path(base) / "resource-agents"
    path.mkdir(parents=True, exist_ok=True, mode=0o755)
    return path


def safe_name(name: str) -> str:
    """A resource name usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name) or "_"


def config_error(exc: ParamError, t0: float) -> Outcome:
    return Outcome(OcfCode.ERR_CONFIGURED, time.monotonic() - t0, reason=str(exc))


def done(code: OcfCode, t0: float, reason: str = "", output: str = "") -> Outcome:
    """An Outcome for a built-in agent, timed from `t0` (time.monotonic())."""
    return Outcome(code, time.monotonic() - t0, output, reason=reason)
