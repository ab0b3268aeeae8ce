"""Fixtures for the integration tests: real targets (`ophiura target`, tgtd) on 127.0.0.1.

See harness.py for how targets are run. Each fixture stops what it started, by PID; the log of
every target a failing test used is attached to its report; the conformance family table is
printed at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import CuRegistry, Server, TargetFactory

_FACTORIES = pytest.StashKey[list[TargetFactory]]()
_CU = pytest.StashKey[CuRegistry]()


@pytest.fixture
def start_target(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TargetFactory]:
    """Function-scoped factory: `start_target("ophiura", thin=True, chap=(user, secret))`."""
    factory = TargetFactory(tmp_path)
    request.node.stash.setdefault(_FACTORIES, []).append(factory)
    yield factory
    problems = factory.close()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def module_targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TargetFactory]:
    """Module-scoped factory for targets shared by the tests of one file."""
    factory = TargetFactory(tmp_path_factory.mktemp("targets"))
    yield factory
    problems = factory.close()
    if problems:  # reported as an error of the module's last test
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def ophiura_thick(module_targets: TargetFactory) -> Server:
    return module_targets("ophiura")


@pytest.fixture(scope="module")
def ophiura_thin(module_targets: TargetFactory) -> Server:
    return module_targets("ophiura", thin=True)


@pytest.fixture(scope="module")
def tgtd_target(module_targets: TargetFactory) -> Server:
    return module_targets("tgtd")


@pytest.fixture(scope="session")
def cu_registry(request: pytest.FixtureRequest) -> CuRegistry:
    """Where test_conformance keeps its runs, so the end-of-session summary can print them."""
    return request.config.stash.setdefault(_CU, CuRegistry())


def _servers_of(item: pytest.Item) -> list[Server]:
    servers: list[Server] = []
    for factory in item.stash.get(_FACTORIES, []):
        servers += factory.servers
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Server):
            servers.append(value)
        else:
            servers += [s for s in getattr(value, "servers", []) if isinstance(s, Server)]
    return list({id(s): s for s in servers}.values())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for server in _servers_of(item):
            title = f"{server.kind} pid {server.pid} log {server.log_path}"
            report.sections.append((title, server.log(80)))
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    registry = config.stash.get(_CU, None)
    if registry is None or not registry.runs:
        return
    from bench.iscsi_test_cu import family_table

    tr = terminalreporter
    tr.section("iscsi-test-cu per family (pass/fail/skip)")
    catalogue = registry.catalogue or {}
    for line in family_table(registry.runs, catalogue).splitlines():
        tr.write_line(line)
    for name, run in registry.runs.items():
        tr.write_line(f"{name}: {run.elapsed:.1f} s, raw output {run.output_path}")
    if registry.workdir is not None:
        tr.write_line(f"summary: {registry.workdir / 'summary.json'}")
