"""The demo's report: one JSON document (what the test checks) and its human rendering.

Availability: what this setup promises comes from `ophiura avail` (the StarFish and cluster
models), what the run measured from the client's own ledger and, when `ophiura avail
--measured` exists, from the cluster's event log. When the `avail` command is not there, the
report says so instead of inventing a number.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ophiura.demo.client import Ledger

OUTAGE_THRESHOLD = 0.25  # a gap between acknowledgements longer than this counts as downtime
# What the promises assume (not measured here): one SE up 99% of the time (a modest commodity
# machine), a node failing once a month and taking 4 h to repair. Detection and recovery times
# in the cluster promise are the ones this run measured.
SE_AVAILABILITY = "0.99"
NODE_UPTIME = "30d"
NODE_DOWNTIME = "4h"


def client_availability(ledger: Ledger, start: float, end: float) -> dict[str, Any]:
    """Measured by the client: the share of [start, end] not inside a gap between
    acknowledgements longer than OUTAGE_THRESHOLD (the time it could not store a record)."""
    times = [t for t in ledger.ack_times() if start <= t <= end]
    window = end - start
    down = sum(b - a for a, b in itertools.pairwise(times) if b - a > OUTAGE_THRESHOLD)
    return {
        "window_s": round(window, 3),
        "unavailable_s": round(down, 3),
        "availability": round(1 - down / window, 6) if window > 0 else None,
        "definition": f"share of the run without a gap > {OUTAGE_THRESHOLD} s between "
        "acknowledged records, as the client saw it",
    }


def _avail_cli(args: list[str], timeout: float = 60.0) -> tuple[Any | None, str | None]:
    """Run `ophiura avail ARGS --json`: (parsed result, None) or (None, why not)."""
    argv = [sys.executable, "-m", "ophiura.cli", "avail", *args, "--json"]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`ophiura avail` did not run: {exc}"
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()
        if any("No such command" in line for line in err):
            return None, "`ophiura avail` is not part of this build yet: no promise computed"
        return None, f"`ophiura avail {' '.join(args)}` exited {res.returncode}: " + (
            err[-1] if err else ""
        )
    try:
        return json.loads(res.stdout), None
    except ValueError:
        return None, "`ophiura avail` printed no JSON"


def availability(
    ledger: Ledger,
    start: float,
    end: float,
    wall: tuple[float, float],
    event_logs: list[Path],
    n: int,
    q: int,
    hierarchy: str,
    failover: dict[str, Any] | None,
    deadline: float,
) -> dict[str, Any]:
    """Promised (models, with their assumptions spelled out) and measured (client ledger,
    cluster event logs over the same window `wall` = (since, until) in Unix time)."""
    storage_args = ["--se-availability", SE_AVAILABILITY, "-N", str(n), "-Q", str(q)]
    storage, storage_err = _avail_cli(storage_args)
    out: dict[str, Any] = {
        "promised_storage": _pick(storage, "eq1"),
        "promised_storage_args": "ophiura avail " + " ".join(storage_args),
        "promised_storage_error": storage_err,
        "promised_cluster": None,
        "promised_cluster_args": None,
        "promised_cluster_error": "no failover was measured",
        "measured_client": client_availability(ledger, start, end),
        "measured_cluster": None,
        "measured_cluster_args": None,
        "measured_cluster_error": None,
    }
    if failover and failover.get("detected_s") is not None:
        detect = failover["detected_s"]
        recover = max(0.0, failover["app_answering_s"] - detect)
        args = [
            "--cluster",
            "--nodes",
            "3",
            "--uptime",
            NODE_UPTIME,
            "--downtime",
            NODE_DOWNTIME,
            "--detect",
            f"{detect:.3f}s",
            "--recover",
            f"{recover:.3f}s",
        ]
        got, err = _avail_cli(args)
        out["promised_cluster"] = _pick(got, "eq3")
        out["promised_cluster_args"] = "ophiura avail " + " ".join(args)
        out["promised_cluster_error"] = err
    if event_logs:
        args = [
            "--measured",
            "--hierarchy",
            hierarchy,
            "--deadline",
            f"{deadline:g}s",
            "--since",
            f"@{wall[0]:.3f}",
            "--until",
            f"@{wall[1]:.3f}",
        ]
        for log in event_logs:
            args += ["--log", str(log)]
        got, err = _avail_cli(args)
        h = (got or {}).get("hierarchies", {}).get(hierarchy)
        if h is not None:
            out["measured_cluster"] = {k: v for k, v in h.items() if k != "intervals"}
        out["measured_cluster_args"] = "ophiura avail " + " ".join(
            a if not a.startswith("/") else Path(a).parent.name + "/events" for a in args
        )
        out["measured_cluster_error"] = err or (None if h else f"no {hierarchy} in the logs")
    return out


def _pick(result: Any, key: str) -> dict[str, Any] | None:
    return result.get(key) if isinstance(result, dict) else None


# ---------------------------------------------------------------------- human rendering


def _fmt(v: Any, unit: str = " s") -> str:
    return "-" if v is None else f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def render(report: dict[str, Any], console: Console | None = None) -> None:
    con = console or Console()
    ok = report["ok"]
    con.rule("[bold]ophiura demo report")
    con.print(
        f"mode: [bold]{report['mode']}[/]  duration {report['duration_s']:.1f} s  "
        f"(SEs N={report['n']}, Q={report['q']}; nodes {', '.join(report['nodes'])})"
    )
    for why in report.get("left_out", []):
        con.print(f"[yellow]left out:[/] {why}")
    t = Table(title="events", title_justify="left")
    for col in ("event", "at", "client outage", "failed req.", "what the system did"):
        t.add_column(col)
    for e in report["events"]:
        t.add_row(
            e["name"],
            _fmt(e.get("at_s")),
            _fmt(e.get("outage_s")),
            str(e.get("failed_requests", "-")),
            _did(e),
        )
    con.print(t)
    r = report.get("records")
    if r:
        style = "green" if r["lost"] == 0 else "bold red"
        con.print(
            f"records: {r['acknowledged']} acknowledged, {r['verified']} read back, "
            f"[{style}]{r['lost']} lost[/]  ({r['stored_unacknowledged']} stored without "
            f"an answer reaching the client, {r['failed_requests']} failed requests; "
            f"typical gap between acks {_fmt(r.get('typical_gap_s'))})"
        )
        if r["lost_ids"]:
            con.print(f"[bold red]lost:[/] {', '.join(r['lost_ids'])}")
    a = report.get("availability")
    if a:
        _render_availability(con, a)
    if report.get("dashboard"):
        con.print(f"dashboard: {report['dashboard']}")
    if report.get("error"):
        con.print(f"[bold red]story stopped:[/] {report['error']}")
    if report.get("logs"):
        con.print(f"logs: {report['logs']}")
    con.print("[bold green]OK: nothing acknowledged was lost[/]" if ok else "[bold red]FAILED[/]")


def _did(e: dict[str, Any]) -> str:
    if e["name"] == "se-crash":
        rec = e["recovery"]
        return (
            f"SE {e['se']} down {rec['down_s']:.1f} s; {rec['kind']} recovery "
            f"{rec['duration_s']:.3f} s"
        )
    if e["name"] == "node-crash":
        tk = e["takeover"]
        he = tk.get("he") or {}
        parts = [f"{e['from']} -> {e['to']}"]
        if e.get("detected_s") is not None:
            parts.append(f"detected {e['detected_s']:.2f} s")
        if he.get("activated_s") is not None:
            parts.append(f"HE takeover {he['activated_s']:.3f} s")
        parts.append(f"epoch {tk['epoch_before']} -> {tk['epoch_after']}")
        parts.append(f"app answering {e['app_answering_s']:.2f} s")
        return ", ".join(parts)
    if e["name"] == "node-return":
        return (
            f"{e['node']} back; still on {', '.join(e['running_on'])}: "
            f"{'FAILED BACK' if e['failback'] else 'no automatic failback'}"
        )
    if e["name"] == "switchover":
        return (
            f"{e['from']} -> {e['to']}, running {e['hierarchy_running_s']:.2f} s, app "
            f"answering {e['app_answering_s']:.2f} s"
        )
    return e.get("what", "")


def _render_availability(con: Console, a: dict[str, Any]) -> None:
    t = Table(title="availability", title_justify="left")
    for col in ("", "availability", "nines", "downtime / year", "from"):
        t.add_column(col)

    def row(label: str, res: dict[str, Any] | None, err: str | None, src: str | None) -> None:
        if res is None:
            t.add_row(label, Text("not computed", "yellow"), "", "", err or "")
            return
        t.add_row(
            label,
            str(res["percent"]),
            str(res["nines"]),
            _duration(res.get("downtime_per_year_s")),
            src or "",
        )

    row(
        "promised: storage (Eq. 1)",
        a["promised_storage"],
        a["promised_storage_error"],
        a["promised_storage_args"],
    )
    row(
        "promised: cluster (Eq. 3)",
        a["promised_cluster"],
        a["promised_cluster_error"],
        a["promised_cluster_args"],
    )
    m = a["measured_cluster"]
    row(
        "measured: cluster event logs",
        m,
        a["measured_cluster_error"],
        None
        if m is None
        else f"{m['outage_count']} outages, {m['down_s']:.3f} s down of {m['observed_s']:.1f} s",
    )
    c = a["measured_client"]
    t.add_row(
        "measured: client",
        f"{100 * c['availability']:.4f}%",
        "",
        "",
        f"{c['unavailable_s']:.3f} s without an ack (gap > {OUTAGE_THRESHOLD} s) of "
        f"{c['window_s']:.1f} s",
    )
    con.print(t)
    con.print(
        "  (the promises assume one SE up 99% of the time and a node failing monthly with "
        "4 h to repair; a run that crashes something every few seconds measures far less "
        "by design)"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"
