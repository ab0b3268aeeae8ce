"""libiscsi's conformance suite against `ophiura target`, thick and thin ("Must show" item 1).

`iscsi-test-cu -d -S -t ALL -i A -I B URL URL` runs ONCE per backing variant (a session fixture;
the same URL twice gives the MultipathIO family its second path). Its verbose output is parsed
per test (bench/iscsi_test_cu.py) and every family (the 51 suites listed by `iscsi-test-cu -l`)
becomes one pytest test asserting that none of its tests failed; the failure message lists each
failing test with what libiscsi printed. One more test per variant asserts more passes than tgtd
(run in the same session on the same kind of file; 162 of 230 when tgtd is not installed).

Raw output, a JSON summary and the per-family table are written to the artifacts directory
($OPHIURA_ARTIFACTS, else a pytest temporary directory) and the table is printed at the end.

EXPECTED_FAILURES below is the explicit list of what does not pass yet. Each entry is an
xfail(strict=True): when the family starts passing, its test fails as XPASS(strict) until the
entry is deleted, so the list can only shrink. Keys: "Family" (both variants), "thin:Family"
or "thick:Family" (one variant), and "total" / "thin:total" for the comparison with tgtd.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from bench.iscsi_test_cu import (
    FAIL,
    NOTRUN,
    PASS,
    SKIP,
    CuRun,
    family_table,
    list_tests,
    run_suite,
)
from bench.servers import (
    Server,
    ServerError,
    make_sparse,
    size_bytes,
    start_ophiura,
    start_tgtd,
    tgtd_unavailable,
)

from .harness import CuRegistry, require_ophiura_target, require_tgtd, require_tools

# ----------------------------------------------------------------------------------------------
# What does not pass yet. Empty it as the target improves; the reason says who/what it waits for.
EXPECTED_FAILURES: dict[str, str] = {}
# ----------------------------------------------------------------------------------------------

TGTD_REFERENCE_PASSES = 162  # tgtd 1.0.85, libiscsi 1.19.0, 2 URLs (shared/DESIGN.md)
VARIANTS = ("thick", "thin")
SIZE = "64M"
CU_TIMEOUT = float(os.environ.get("OPHIURA_CU_TIMEOUT", "600"))  # whole run (tgtd: ~17 s)
CU_STALL = float(os.environ.get("OPHIURA_CU_STALL", "120"))  # no output: a test hangs
# pytest-timeout counts fixture setup, and the first test of a variant runs the whole suite.
TEST_TIMEOUT = CU_TIMEOUT + 120

# The 51 families of libiscsi 1.19.0, used only to name the tests when iscsi-test-cu is absent
# (they then skip); with the tool installed the names come from `iscsi-test-cu -l`.
FALLBACK_FAMILIES = [
    "CompareAndWrite",
    "ExtendedCopy",
    "GetLBAStatus",
    "Inquiry",
    "Mandatory",
    "ModeSense6",
    "NoMedia",
    "OrWrite",
    "Prefetch10",
    "Prefetch16",
    "PreventAllow",
    "PrinReadKeys",
    "PrinServiceactionRange",
    "PrinReportCapabilities",
    "ProutRegister",
    "ProutReserve",
    "ProutClear",
    "ProutPreempt",
    "Read6",
    "Read10",
    "Read12",
    "Read16",
    "ReadCapacity10",
    "ReadCapacity16",
    "ReadDefectData10",
    "ReadDefectData12",
    "ReadOnly",
    "ReceiveCopyResults",
    "ReportSupportedOpcodes",
    "Reserve6",
    "Sanitize",
    "StartStopUnit",
    "TestUnitReady",
    "Unmap",
    "Verify10",
    "Verify12",
    "Verify16",
    "Write10",
    "Write12",
    "Write16",
    "WriteAtomic16",
    "WriteSame10",
    "WriteSame16",
    "WriteVerify10",
    "WriteVerify12",
    "WriteVerify16",
    "iSCSIcmdsn",
    "iSCSIdatasn",
    "iSCSIResiduals",
    "iSCSITMF",
    "MultipathIO",
]


def _families() -> list[str]:
    if shutil.which("iscsi-test-cu"):
        try:
            return list(list_tests())
        except (OSError, RuntimeError):
            pass
    return FALLBACK_FAMILIES


FAMILIES = _families()


def _expected(variant: str, key: str) -> str | None:
    return EXPECTED_FAILURES.get(f"{variant}:{key}") or EXPECTED_FAILURES.get(key)


def _params(keys: list[str]) -> list[object]:
    params = []
    for variant in VARIANTS:
        for key in keys:
            reason = _expected(variant, key)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(variant, key, id=f"{variant}-{key}", marks=marks))
    return params


class Conformance:
    """Runs the suite at most once per target in this session and keeps the results."""

    def __init__(self, registry: CuRegistry) -> None:
        assert registry.workdir is not None
        self.registry = registry
        self.workdir = registry.workdir
        self.errors: dict[str, str] = {}
        self.servers: list[object] = []  # read by conftest to attach logs to failing tests

    def catalogue(self) -> dict[str, list[str]]:
        if self.registry.catalogue is None:
            self.registry.catalogue = list_tests()
        return self.registry.catalogue

    def _run(self, name: str, start: Callable[[Path], Server]) -> CuRun:
        runs = self.registry.runs
        if name in self.errors:
            pytest.fail(self.errors[name], pytrace=False)
        if name not in runs:
            directory = self.workdir / name
            directory.mkdir(parents=True, exist_ok=True)
            try:
                server = start(directory)
            except ServerError as exc:
                self.errors[name] = str(exc)
                pytest.fail(str(exc), pytrace=False)
            self.servers.append(server)
            try:
                url = server.url()
                run = run_suite(
                    [url, url],
                    directory / "iscsi-test-cu.log",
                    timeout=CU_TIMEOUT,
                    stall_timeout=CU_STALL,
                    catalogue=self.catalogue(),
                )
            finally:
                self.registry.server_exit[name] = server.stop()
            runs[name] = run
            self._save()
        return runs[name]

    def ophiura(self, variant: str) -> CuRun:
        require_tools("iscsi-test-cu")
        require_ophiura_target()
        thin = variant == "thin"

        def start(directory: Path) -> Server:
            return start_ophiura(
                directory / "disk.img",
                SIZE,
                directory / "ophiura.log",
                thin=thin,
                state_dir=directory / "state",
            )

        return self._run(f"ophiura-{variant}", start)

    def tgtd(self) -> CuRun:
        require_tools("iscsi-test-cu")
        require_tgtd()

        def start(directory: Path) -> Server:
            backing = make_sparse(directory / "disk.img", size_bytes(SIZE))
            return start_tgtd(backing, directory / "tgtd.log")

        return self._run("tgtd-thick", start)

    def _save(self) -> None:
        summary = {name: run.to_json() for name, run in self.registry.runs.items()}
        for name, code in self.registry.server_exit.items():
            summary[name]["server_exit"] = code
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        table = family_table(self.registry.runs, self.catalogue())
        (self.workdir / "families.md").write_text(table + "\n")


@pytest.fixture(scope="session")
def conformance(tmp_path_factory: pytest.TempPathFactory, cu_registry: CuRegistry) -> Conformance:
    if cu_registry.workdir is None:
        base = os.environ.get("OPHIURA_ARTIFACTS")
        if base:
            cu_registry.workdir = Path(base) / "conformance"
            cu_registry.workdir.mkdir(parents=True, exist_ok=True)
        else:
            cu_registry.workdir = tmp_path_factory.mktemp("conformance")
    return Conformance(cu_registry)


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize(("variant", "family"), _params(FAMILIES))
def test_family(conformance: Conformance, variant: str, family: str) -> None:
    """Every test of the family passes or is skipped by the suite itself (optional feature)."""
    run = conformance.ophiura(variant)
    results = run.family_results(family)
    assert results, f"family {family} not in the output of {run.output_path}"
    failed = [r for r in results if r.status in (FAIL, NOTRUN)]
    counts = run.family_counts(family)
    assert not failed, (
        f"{variant}: {len(failed)} of {len(results)} tests of {family} failed "
        f"(pass {counts[PASS]}, skip {counts[SKIP]}); raw output {run.output_path}\n"
        + "\n".join(r.describe() for r in failed)
    )


@pytest.mark.timeout(TEST_TIMEOUT * 2)
@pytest.mark.parametrize(("variant", "key"), _params(["total"]))
def test_more_passes_than_tgtd(conformance: Conformance, variant: str, key: str) -> None:
    run = conformance.ophiura(variant)
    reference, source = TGTD_REFERENCE_PASSES, "tgtd 1.0.85 reference figure"
    if tgtd_unavailable() is None and shutil.which("iscsi-test-cu"):
        tgtd = conformance.tgtd()
        reference, source = tgtd.totals()[PASS], f"tgtd in this session ({tgtd.output_path})"
    totals = run.totals()
    assert totals[PASS] > reference, (
        f"{variant}: {totals[PASS]} passes (fail {totals[FAIL] + totals[NOTRUN]}, "
        f"skip {totals[SKIP]}), need more than {reference} ({source})"
    )


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("variant", VARIANTS)
def test_suite_ran_to_the_end(conformance: Conformance, variant: str) -> None:
    """The harness itself: every listed test reported, and our parse agrees with CUnit's totals.

    This catches a crashed or hung iscsi-test-cu, a target that died mid-run or did not exit
    cleanly on SIGTERM, and drift in the output format (a libiscsi upgrade).
    """
    run = conformance.ophiura(variant)
    _check_run(run)
    exit_code = conformance.registry.server_exit.get(f"ophiura-{variant}")
    assert exit_code == 0, f"ophiura target exited {exit_code} on SIGTERM after the suite"


@pytest.mark.timeout(TEST_TIMEOUT)
def test_tgtd_reference_run(conformance: Conformance) -> None:
    """tgtd through the same harness: validates the parser against the C peer."""
    run = conformance.tgtd()
    _check_run(run)


def _check_run(run: CuRun) -> None:
    assert not run.timed_out, (
        f"{run.stopped_because}; test running then: {run.unfinished or '?'}; "
        f"raw output {run.output_path}"
    )
    totals = run.totals()
    notrun = [r.full_name for r in run.results.values() if r.status == NOTRUN]
    assert not notrun, f"{len(notrun)} tests never reported (first: {notrun[:5]})"
    summary = run.cunit_summary
    assert summary, f"no CUnit Run Summary in {run.output_path}"
    assert summary["ran"] == summary["total"] == len(run.results)
    assert summary["failed"] == totals[FAIL], (summary, dict(totals))
    assert summary["passed"] == totals[PASS] + totals[SKIP], (summary, dict(totals))
