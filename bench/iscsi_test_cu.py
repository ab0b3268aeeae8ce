"""Run libiscsi's conformance suite (`iscsi-test-cu`) and parse its verbose output per test.

CUnit counts a skipped test as passed (libiscsi's tests call CU_PASS after logging
`[SKIPPED] ...`), so its own "Run Summary" cannot tell pass from skip. We read the verbose
stream instead. Its shape (CUnit 2.1-3 basic interface, verbose mode, libiscsi 1.19.0):

    Suite: Read10
      Test: Simple ...passed
      Test: BeyondEol ...    [FAILED] READ10 successful but should have failed ...
    FAILED
        1. test_read10_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
      Test: ReadProtect ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
    passed
      Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense ...

`passed`/`FAILED` is printed without a newline, and libiscsi's messages always end with one, so
the verdict is either right after `...` or at the start of a line. Messages printed after the
verdict (the last example) come from the test's teardown and do not change it. A test is a skip
when it passed and logged `[SKIPPED]` before its verdict. Tests that never appear (the tool
crashed or was stopped by our timeout) are reported as `notrun`, which counts as a failure.

Used by `tests/integration/test_conformance.py`; `python -m bench.iscsi_test_cu URL` runs the
suite once and prints the per-family table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASS, FAIL, SKIP, NOTRUN = "pass", "fail", "skip", "notrun"
STATUSES = (PASS, FAIL, SKIP, NOTRUN)
INITIATOR_1 = "iqn.2026-11.io.ophiura.test:initiator-a"
INITIATOR_2 = "iqn.2026-11.io.ophiura.test:initiator-b"
MAX_MESSAGES = 30
MAX_ASSERTIONS = 8

_SUITE = re.compile(r"^Suite: (\S+)\s*$")
_TEST = re.compile(r"^  Test: (.+?) \.\.\.(.*)$")
_ASSERTION = re.compile(r"^\s+\d+\. (\S+:\d+)\s+- (.*)$")
_SUMMARY_TESTS = re.compile(r"^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


@dataclass
class TestResult:
    family: str
    name: str
    status: str = NOTRUN
    messages: list[str] = field(default_factory=list)  # logged before the verdict
    assertions: list[str] = field(default_factory=list)  # "file:line - CU_ASSERT..."
    assertion_count: int = 0
    teardown: list[str] = field(default_factory=list)  # logged after the verdict

    @property
    def full_name(self) -> str:
        return f"{self.family}.{self.name}"

    def skip_reason(self) -> str:
        for line in self.messages:
            if "[SKIPPED]" in line:
                return line.strip()
        return ""

    def describe(self) -> str:
        """The failure as the SCSI/iSCSI engineers want to read it: messages, then asserts."""
        lines = [f"{self.full_name}: {self.status.upper()}"]
        lines += [f"    {m.strip()}" for m in self.messages if m.strip()]
        lines += [f"    assert {a}" for a in self.assertions]
        if self.assertion_count > len(self.assertions):
            lines.append(f"    ... {self.assertion_count - len(self.assertions)} more asserts")
        if self.status == NOTRUN:
            lines.append("    (never reported: iscsi-test-cu crashed, hung or was stopped)")
        return "\n".join(lines)


@dataclass
class CuRun:
    """One `iscsi-test-cu` run: per-test results in suite order, plus how the run went."""

    results: dict[str, TestResult]
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    elapsed: float = 0.0
    timed_out: bool = False
    output_path: str = ""
    cunit_summary: dict[str, int] = field(default_factory=dict)  # CUnit's own tests line
    stopped_because: str = ""
    unfinished: str = ""  # a test that started but printed no verdict (crash or hang)

    def families(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.results.values():
            seen.setdefault(r.family, None)
        return list(seen)

    def family_results(self, family: str) -> list[TestResult]:
        return [r for r in self.results.values() if r.family == family]

    def family_counts(self, family: str) -> Counter[str]:
        return Counter(r.status for r in self.family_results(family))

    def totals(self) -> Counter[str]:
        return Counter(r.status for r in self.results.values())

    def failures(self) -> list[TestResult]:
        return [r for r in self.results.values() if r.status in (FAIL, NOTRUN)]

    def to_json(self) -> dict[str, object]:
        return {
            "command": self.command,
            "returncode": self.returncode,
            "elapsed": round(self.elapsed, 2),
            "timed_out": self.timed_out,
            "stopped_because": self.stopped_because,
            "unfinished": self.unfinished,
            "output_path": self.output_path,
            "cunit_summary": self.cunit_summary,
            "totals": dict(self.totals()),
            "families": {f: dict(self.family_counts(f)) for f in self.families()},
            "failures": [asdict(r) for r in self.failures()],
        }


def list_tests(binary: str = "iscsi-test-cu") -> dict[str, list[str]]:
    """Families (the 51 suites under ALL) and their tests, from `iscsi-test-cu -l`."""
    out = subprocess.run([binary, "-l"], capture_output=True, text=True, timeout=30, check=False)
    families: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split(".")
        if parts[0] != "ALL" or len(parts) < 2:
            continue
        tests = families.setdefault(parts[1], [])
        if len(parts) == 3:
            tests.append(parts[2])
    if not families:
        raise RuntimeError(f"`{binary} -l` listed no tests: {out.stdout[:200]!r} {out.stderr!r}")
    return families


def parse_verbose(text: str, catalogue: dict[str, list[str]] | None = None) -> CuRun:
    """Per-test results from verbose output; tests in `catalogue` never seen become `notrun`."""
    results: dict[str, TestResult] = {}
    if catalogue:
        for family, tests in catalogue.items():
            for name in tests:
                results[f"{family}.{name}"] = TestResult(family, name)
    suite = "?"
    current: TestResult | None = None
    decided = False
    summary: dict[str, int] = {}

    def fragment(frag: str) -> None:
        nonlocal decided
        if current is None:
            return
        if not decided:
            if frag.startswith("passed"):
                current.status = SKIP if any("[SKIPPED]" in m for m in current.messages) else PASS
                decided = True
                rest = frag[len("passed") :]
                if rest.strip():
                    current.teardown.append(rest.strip())
            elif frag.startswith("FAILED"):
                current.status = FAIL
                decided = True
                rest = frag[len("FAILED") :]
                if rest.strip():
                    current.teardown.append(rest.strip())
            elif frag.strip() and len(current.messages) < MAX_MESSAGES:
                current.messages.append(frag.rstrip())
            return
        m = _ASSERTION.match(frag)
        if m and current.status == FAIL:
            current.assertion_count += 1
            if len(current.assertions) < MAX_ASSERTIONS:
                current.assertions.append(f"{m.group(1)} - {m.group(2)}")
        elif frag.strip() and len(current.teardown) < MAX_MESSAGES:
            current.teardown.append(frag.strip())

    for line in text.splitlines():
        m = _SUITE.match(line)
        if m:
            suite, current, decided = m.group(1), None, False
            continue
        m = _TEST.match(line)
        if m:
            key = f"{suite}.{m.group(1)}"
            current = results.get(key) or TestResult(suite, m.group(1))
            current.messages, current.assertions, current.teardown = [], [], []
            results[key] = current
            decided = False
            fragment(m.group(2))
            continue
        if line.startswith("Run Summary:"):
            current = None
            continue
        m = _SUMMARY_TESTS.match(line)
        if m:
            keys = ("total", "ran", "passed", "failed", "inactive")
            summary = dict(zip(keys, map(int, m.groups()), strict=True))
            continue
        fragment(line)
    unfinished = current.full_name if current is not None and not decided else ""
    return CuRun(results=results, cunit_summary=summary, unfinished=unfinished)


def run_suite(
    urls: list[str],
    output_path: Path,
    *,
    timeout: float = 900.0,
    stall_timeout: float = 120.0,
    test: str = "ALL",
    initiators: tuple[str, str] = (INITIATOR_1, INITIATOR_2),
    catalogue: dict[str, list[str]] | None = None,
    binary: str = "iscsi-test-cu",
) -> CuRun:
    """Run the suite (destructive tests and SANITIZE allowed) and parse what it printed.

    Output goes straight to `output_path` (line-buffered through stdbuf when available) so a run
    stopped by a timeout still leaves everything it printed. The run is killed after `timeout`
    seconds, or when it prints nothing for `stall_timeout` seconds (a test waiting forever for a
    response from the target); the test that was running is then the one left without verdict.
    """
    cmd = [binary, "-d", "-S", "-t", test, "-i", initiators[0], "-I", initiators[1], *urls]
    wrapped = (["stdbuf", "-oL", "-eL"] if shutil.which("stdbuf") else []) + cmd
    output_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    timed_out = stalled = False
    with open(output_path, "wb") as out:
        proc = subprocess.Popen(
            wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        last_size, last_change = -1, start
        while proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            now = time.monotonic()
            size = output_path.stat().st_size
            if size != last_size:
                last_size, last_change = size, now
            if now - start > timeout:
                timed_out = True
            elif now - last_change > stall_timeout:
                stalled = True
            if timed_out or stalled:
                proc.kill()
                proc.wait(timeout=30)
    elapsed = time.monotonic() - start
    run = parse_verbose(output_path.read_text(errors="replace"), catalogue)
    run.command, run.returncode, run.elapsed = cmd, proc.returncode, elapsed
    run.timed_out, run.output_path = timed_out or stalled, str(output_path)
    if timed_out or stalled:
        why = f"no output for {stall_timeout:.0f} s" if stalled else f"over {timeout:.0f} s"
        run.stopped_because = f"iscsi-test-cu killed: {why}"
        if run.unfinished:
            hung = run.results[run.unfinished]
            hung.messages.append(f"(this test was running when {run.stopped_because})")
    return run


def family_table(runs: dict[str, CuRun], catalogue: dict[str, list[str]]) -> str:
    """Markdown table: one row per family, pass/fail/skip per run (notrun counted as fail)."""
    names = list(runs)
    head = "| family | tests | " + " | ".join(f"{n} pass/fail/skip" for n in names) + " |"
    sep = "|---|---:|" + "---:|" * len(names)
    rows = [head, sep]
    for family, tests in catalogue.items():
        cells = []
        for n in names:
            c = runs[n].family_counts(family)
            cells.append(f"{c[PASS]}/{c[FAIL] + c[NOTRUN]}/{c[SKIP]}")
        rows.append(f"| {family} | {len(tests)} | " + " | ".join(cells) + " |")
    totals = []
    for n in names:
        t = runs[n].totals()
        totals.append(f"**{t[PASS]}/{t[FAIL] + t[NOTRUN]}/{t[SKIP]}**")
    total_tests = sum(len(t) for t in catalogue.values())
    rows.append(f"| **total** | {total_tests} | " + " | ".join(totals) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="iscsi://HOST:PORT/IQN/LUN (used twice, for MultipathIO)")
    parser.add_argument("--out", type=Path, default=Path("iscsi-test-cu.log"))
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--parse-only", action="store_true", help="parse an existing --out file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    catalogue = list_tests()
    if args.parse_only:
        run = parse_verbose(args.out.read_text(errors="replace"), catalogue)
    else:
        run = run_suite([args.url, args.url], args.out, timeout=args.timeout, catalogue=catalogue)
    if args.json:
        json.dump(run.to_json(), sys.stdout, indent=2)
        print()
    else:
        print(family_table({"run": run}, catalogue))
        for r in run.failures():
            print(r.describe())
        print(f"elapsed {run.elapsed:.1f} s, totals {dict(run.totals())}")
    return 0 if not run.failures() else 1


if __name__ == "__main__":
    sys.exit(main())
