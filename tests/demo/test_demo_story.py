"""`ophiura demo` end to end, headless, as `make demo` runs it: its JSON report says nothing
acknowledged was lost, which recovery the SE kill caused, where the failover went, that the
node's return did not pull the hierarchy back, what the client saw and what availability was
promised and measured. Then Ctrl-C or SIGTERM in the middle of the story must leave no
process, process group, namespace or temp dir behind.

Loopback always; the same in network namespaces (floating IP) when root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ophiura.demo.topology import (
    MARKER,
    leftover_namespaces,
    marked_pids,
    namespaces_unavailable,
)

REPO = Path(__file__).resolve().parents[2]
MODES = ["loopback", "netns"]


def _skip_unless_mode(mode: str) -> list[str]:
    if mode == "loopback":
        return ["--no-netns"]
    why = namespaces_unavailable()
    if why:
        pytest.skip(f"namespaces: {why}")
    return ["--netns"]


def _demo(*args: str, live: bool = False) -> subprocess.Popen[str]:
    """`ophiura demo`, headless, or with the live view forced on although stdout is a pipe.
    In a session of its own, so that a Ctrl-C can go to its whole process group, as a
    terminal sends it."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:" + os.environ.get("PYTHONPATH", "")}
    env.pop("FORCE_COLOR", None)
    argv = [sys.executable, "-m", "ophiura.cli", "demo", *args]
    if live:
        env.update(FORCE_COLOR="1", COLUMNS="120", LINES="60")
    else:
        argv.insert(4, "--headless")
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )


def _stat(pid: str) -> tuple[int, int, int] | None:
    """(ppid, pgid, start time) of a process, None if it is gone or a zombie (dead already:
    only waiting for init, its parent after a crash, to reap it)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[2]), int(fields[19])


class ProcessWatch:
    """Samples, while the demo runs, every process it started: its descendants, and whatever
    carries its run marker (what a killed node's children become once reparented). Afterwards
    says which of them, or of their process groups, are still there."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[tuple[int, int], int] = {}  # (pid, start time) -> pgid
        self.run_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        procs = {}
        for d in os.listdir("/proc"):
            if d.isdigit() and (st := _stat(d)) is not None:
                procs[int(d)] = st
        ours = {self.root}
        grew = True
        while grew:  # descendants of the demo
            new = {p for p, (ppid, _, _) in procs.items() if ppid in ours} - ours
            ours |= new
            grew = bool(new)
        if self.run_id is not None:
            ours |= set(marked_pids(self.run_id)) & set(procs)
        for pid in ours:
            if pid in procs:
                _, pgid, start = procs[pid]
                self.seen[(pid, start)] = pgid

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a process vanishing mid-scan
                self._sample()
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def leftovers(self) -> list[str]:
        groups = set(self.seen.values())
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or (st := _stat(d)) is None:
                continue
            pid, (_, pgid, start) = int(d), st
            if (pid, start) in self.seen or pgid in groups:
                try:
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                out.append(f"{pid} (group {pgid}): {cmd.decode(errors='replace')[:150]}")
        return out


def _assert_clean(run_id: str, text: str, watch: ProcessWatch) -> None:
    watch.stop()
    assert len(watch.seen) >= 5, f"the watch saw too little to mean anything: {watch.seen}"
    assert watch.leftovers() == [], "processes or process groups of the demo outlived it"
    assert marked_pids(run_id) == [], f"processes carrying {MARKER}={run_id} outlived it"
    assert leftover_namespaces(run_id) == []
    tmp = re.search(r"temp dir (\S+)", text)
    assert tmp is not None and not Path(tmp.group(1)).exists(), "temp dir left behind"
    left = list(Path(tempfile.gettempdir()).glob(f"ophiura-demo-{run_id}-*"))
    assert left == [], left


def _read_until(proc: subprocess.Popen[str], watch: ProcessWatch, marker: str) -> list[str]:
    """Lines of the demo up to the one that contains `marker` (learning the run id)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if watch.run_id is None and (m := re.search(r"run (\w+),", line)):
            watch.run_id = m.group(1)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} from the demo:\n{''.join(lines)}")


@pytest.mark.timeout(200)
@pytest.mark.parametrize("mode", MODES)
def test_story_loses_nothing_and_reports_it(mode: str, tmp_path: Path) -> None:
    flags = _skip_unless_mode(mode)
    out = tmp_path / "report.json"
    t0 = time.monotonic()
    # loopback runs with the live view (rich tables redrawn 4 times a second), so its
    # rendering is exercised all through the story; namespaces run headless
    proc = _demo(*flags, "--json", str(out), live=mode == "loopback")
    watch = ProcessWatch(proc.pid)
    try:
        text, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # a hung demo: interrupt it so that it still cleans up
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=60)
    took = time.monotonic() - t0
    print(text[-8000:])
    assert proc.returncode == 0, text
    assert took < 180, f"the demo took {took:.0f} s (must stay under 3 minutes)"
    r: dict[str, Any] = json.loads(out.read_text())
    watch.run_id = r["run_id"]
    _assert_clean(r["run_id"], text, watch)
    assert r["ok"] is True and r["error"] is None and r["mode"] == mode
    rec = r["records"]
    assert rec["lost"] == 0 and rec["lost_ids"] == []
    assert rec["acknowledged"] > 500 and rec["verified"] == rec["acknowledged"]
    assert rec["stored"] >= rec["acknowledged"]
    ev = {e["name"]: e for e in r["events"]}
    assert [e["name"] for e in r["events"]] == [
        "se-crash",
        "node-crash",
        "node-return",
        "switchover",
    ]
    # an SE killed for ~4 s while writes go on: every missed write is still in the HE queue
    se = ev["se-crash"]
    assert se["recovery"]["kind"] == "quick", se
    assert 0 <= se["recovery"]["duration_s"] < 5 and se["recovery"]["down_s"] >= 3.5
    assert se["outage_s"] is not None and se["outage_s"] < 1.0, se  # Q=2 still met: no outage
    # the active node dies: the next by priority takes the epoch, the client sees a bounded gap
    nc = ev["node-crash"]
    assert nc["from"] == "n1" and nc["to"] == nc["expected_to"] == "n2", nc
    tk = nc["takeover"]
    assert tk["epoch_after"] > tk["epoch_before"] >= 1
    assert tk["he"] is not None and 0 < tk["he"]["activated_s"] < 10, tk
    assert f"epoch {tk['epoch_after']}:" in tk["he"]["claim"], tk
    assert nc["detected_s"] is not None and 0.3 < nc["detected_s"] < 3.0, nc
    assert nc["detected_s"] <= nc["hierarchy_running_s"] <= nc["app_answering_s"], nc
    # the client cannot be answered before n2 has even noticed, and its gap ends when the
    # story saw n2 answer it (the story polls; the gap began at most one ack before the crash)
    assert nc["outage_s"] is not None and 0.5 < nc["outage_s"] < 15.0, nc
    assert nc["detected_s"] <= nc["outage_s"] <= nc["app_answering_s"] + 0.5, nc
    assert nc["failed_requests"] > 0  # the client did notice the crash
    # it comes back: no automatic failback, and nothing the client would call an outage
    back = ev["node-return"]
    assert back["failback"] is False and back["running_on"] == ["n2"], back
    assert back["outage_s"] is not None and back["outage_s"] < 2.0, back
    # manual switchover back to n1
    sw = ev["switchover"]
    assert sw["from"] == "n2" and sw["to"] == "n1", sw
    assert sw["outage_s"] is not None and 0 < sw["outage_s"] <= sw["app_answering_s"] + 0.5, sw
    assert sw["epoch_after"] > tk["epoch_after"]
    assert sw["he"] is not None and f"epoch {sw['epoch_after']}:" in sw["he"]["claim"], sw
    _check_availability(r["availability"], nc, sw)
    if mode == "loopback":  # the live view drew its tables, with the failover in them
        assert "storage elements" in text and "cluster nodes" in text and "owner, gen 2" in text
    if mode == "netns":
        assert r["left_out"] == []
    else:
        assert any("floating IP" in why for why in r["left_out"])
    assert "availability" in text and "OK: nothing acknowledged was lost" in text


def _check_availability(a: dict[str, Any], nc: dict[str, Any], sw: dict[str, Any]) -> None:
    # promised for the storage: StarFish Eq. 1 with rho = (1 - 0.99)/0.99, the model's own load
    # (what `ophiura avail` uses by default)
    ps = a["promised_storage"]
    assert (ps["n"], ps["q"], ps["se_availability"]) == (3, 2, "0.99"), ps
    assert a["assumptions"]["load_convention"] == "exact"
    rho = Fraction(1, 99)
    eq1 = (1 + 3 * rho) / (1 + rho) ** 3  # i = 0 and i = N - Q = 1
    assert ps["exact"] == str(eq1) and ps["nines"] == 3 and ps["can_lose_data"] is False, ps
    assert a["promised_storage_args"] == "ophiura avail --se-availability 0.99 -N 3 -Q 2"
    # promised for the cluster: with the detection and recovery times this run measured
    pc = a["promised_cluster"]
    assert pc is not None, a["promised_cluster_error"]
    assert pc["detect_s"] == round(nc["detected_s"], 3) and pc["nodes"] == 3
    assert abs(pc["detect_s"] + pc["recover_s"] - nc["app_answering_s"]) < 0.002, pc
    assert pc["nines"] >= 5, pc
    # measured from the nodes' event logs over the client's window: the two moves of the
    # hierarchy (the crash, the switchover) and nothing else
    client = a["measured_client"]
    m = a["measured_cluster"]
    assert m is not None, a["measured_cluster_error"]
    assert m["hierarchy"] == "demo" and m["events"] > 10 and m["unknown_s"] == 0, m
    assert m["outage_count"] == 2, m["outages"]
    crash, switch = m["outages"]
    assert crash["cause"]["task"] == "node-dead" and crash["cause"]["peer"] == "n1", crash
    assert switch["cause"]["node"] == "n2" and switch["restored_by"]["node"] == "n1", switch
    assert abs(m["observed_s"] - client["window_s"]) < 0.5, (m, client)
    assert 0 < m["down_s"] < client["window_s"] and m["availability"] < 1
    # the logs count the app up once its process started, the client once it answered: the
    # logs may only see less downtime, and not much less than the two gaps the client saw
    assert m["down_s"] <= client["unavailable_s"] + 0.5, (m, client)
    assert m["down_s"] >= 0.3 * (nc["outage_s"] + sw["outage_s"]), (m, nc, sw)
    # measured by the client: every gap over the threshold is downtime
    assert client["unavailable_s"] >= nc["outage_s"] + sw["outage_s"] - 0.01, client
    assert 0.5 < client["availability"] < 1.0 and client["nines"] in (0, 1), client


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("mode", "sig", "when"),
    [
        ("loopback", signal.SIGINT, "== 4/6"),
        ("loopback", signal.SIGTERM, "hierarchy demo: ["),
        ("loopback", signal.SIGHUP, "== 3/6"),
        ("netns", signal.SIGINT, "== 4/6"),
        ("netns", signal.SIGTERM, "hierarchy demo: ["),
    ],
)
def test_interrupted_mid_story_leaves_nothing_behind(mode: str, sig: int, when: str) -> None:
    """Ctrl-C (SIGINT to the demo's whole process group, as a terminal sends it) while the
    active node is being killed; SIGTERM (to the demo alone, as a supervisor sends it) while
    the nodes are starting; SIGHUP (the terminal closed) while an SE is down."""
    flags = _skip_unless_mode(mode)
    proc = _demo(*flags)
    watch = ProcessWatch(proc.pid)
    try:
        lines = _read_until(proc, watch, when)
        time.sleep(0.3)  # processes coming and going: the node being killed, or starting
        assert watch.run_id is not None
        assert marked_pids(watch.run_id), "the demo should be running things by now"
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(lines) + rest
    print(text)
    assert proc.returncode == 128 + sig, text
    assert f"interrupted; run {watch.run_id} cleaned up" in rest
    _assert_clean(watch.run_id, text, watch)
