"""Helpers for the integration tests, which run real iSCSI targets on 127.0.0.1:
`ophiura target` (thick, thin, CHAP) and tgtd, the C peer the figures are compared with.

The process control lives in `bench/servers.py` (shared with `python -m bench`). Every target is
started on a free port, waited for with a bounded timeout, stopped by PID (SIGTERM, then
SIGKILL), and its output is captured to a file that conftest attaches to the report of any
failing test that used it.

Missing Debian tools skip with a reason (CI installs them). A missing `ophiura target` command is
an expected failure (xfail with the reason), not a skip: it is our own product, not a tool.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is a top-level package next to `src/` and `tests/`
    sys.path.insert(0, str(ROOT))

from bench.iscsi_test_cu import CuRun  # noqa: E402
from bench.servers import (  # noqa: E402
    Server,
    ServerError,
    make_sparse,
    ophiura_target_unavailable,
    size_bytes,
    start_ophiura,
    start_tgtd,
    tgtd_unavailable,
)

DEFAULT_SIZE = "64M"
CHAP = ("ophiura-user", "s3cret-s3cret-16")

_OPHIURA_STATUS: dict[str, str | None] = {}


def require_tools(*tools: str) -> None:
    """Skip (with the reason printed by -ra) when a Debian test tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"missing tool(s): {', '.join(missing)} (apt-get install libiscsi-bin "
            "qemu-utils qemu-block-extra tgt; `make test` does it as root)"
        )


def require_ophiura_target() -> None:
    """xfail (visibly) while `ophiura target` is not there yet; it is being written."""
    if "reason" not in _OPHIURA_STATUS:
        _OPHIURA_STATUS["reason"] = ophiura_target_unavailable()
    reason = _OPHIURA_STATUS["reason"]
    if reason:
        pytest.xfail(f"ophiura target not available yet: {reason}")


def require_tgtd() -> None:
    reason = tgtd_unavailable()
    if reason:
        pytest.skip(reason)


class TargetFactory:
    """Starts targets on demand and stops every one it started (by PID) on close()."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def __call__(
        self,
        kind: str = "ophiura",
        *,
        thin: bool = False,
        chap: tuple[str, str] | None = None,
        size: str = DEFAULT_SIZE,
        name: str | None = None,
        **kwargs: Any,
    ) -> Server:
        name = name or f"{kind}-{'thin' if thin else 'thick'}{'-chap' if chap else ''}"
        directory = self.workdir / f"{name}-{len(self.servers)}"
        directory.mkdir(parents=True, exist_ok=True)
        backing = directory / "disk.img"
        log = directory / f"{kind}.log"
        try:
            if kind == "ophiura":
                require_ophiura_target()
                server = start_ophiura(
                    backing,
                    size,
                    log,
                    thin=thin,
                    chap=chap,
                    state_dir=directory / "state",
                    **kwargs,
                )
            elif kind == "tgtd":
                require_tgtd()
                make_sparse(backing, size_bytes(size))
                server = start_tgtd(backing, log, thin=thin, chap=chap, **kwargs)
            else:
                raise ValueError(f"unknown target kind {kind!r}")
        except ServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        self.servers.append(server)
        return server

    def close(self) -> list[str]:
        """Stop everything; return complaints (a target that did not exit cleanly)."""
        problems = []
        for server in reversed(self.servers):
            code = server.stop()
            if server.kind == "ophiura" and code != 0:
                problems.append(
                    f"ophiura target (pid {server.pid}) exited {code} on SIGTERM "
                    f"(expected 0); log:\n{server.log()}"
                )
        return problems


@dataclass
class CuRegistry:
    """Conformance runs of this session (name -> CuRun) and where their files are."""

    runs: dict[str, CuRun] = field(default_factory=dict)
    workdir: Path | None = None
    catalogue: dict[str, list[str]] | None = None
    server_exit: dict[str, int | None] = field(default_factory=dict)


def tool_output(result: Any) -> str:
    """stdout+stderr of a CompletedProcess, for assertion messages."""
    out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    return f"exit {result.returncode}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
