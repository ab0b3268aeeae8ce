"""The demo's report: one JSON document (what the test checks) and its human rendering.

Availability: what this setup promises comes from the models behind `ophiura avail` (StarFish
Eq. 1 for the storage, Bottomley Eq. 3 for the cluster), with their assumptions stated; what
the run delivered is measured twice, from the client's own ledger and, as `ophiura avail
--measured` does, from the nodes' event logs.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
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
    acknowledgements longer than OUTAGE_THRESHOLD (the time it could not store a record),
    with the same figures (percent, nines, downtime a year) as `ophiura avail` prints."""
    from ophiura.availability import Availability

    times = [t for t in ledger.ack_times() if start <= t <= end]
    window = end - start
    down = sum(b - a for a, b in itertools.pairwise(times) if b - a > OUTAGE_THRESHOLD)
    out: dict[str, Any] = {
        "window_s": round(window, 3),
        "unavailable_s": round(down, 3),
        "availability": None,
        "nines": None,
        "percent": None,
        "downtime_per_year_s": None,
        "definition": f"share of the run without a gap > {OUTAGE_THRESHOLD} s between "
        "acknowledged records, as the client saw it",
    }
    if window > 0:
        # exact from the rounded milliseconds, so that nines and percent are counted, not
        # rounded (as everywhere in `ophiura avail`)
        up = Fraction(round((window - down) * 1000)) / Fraction(round(window * 1000))
        fig = Availability(up).to_json()
        out.update({k: fig[k] for k in ("availability", "nines", "percent")})
        out["downtime_per_year_s"] = fig["downtime_per_year_s"]
    return out


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
    nodes: int = 3,
) -> dict[str, Any]:
    """Promised (the models of `ophiura avail`, with their assumptions spelled out) and
    measured (the client's ledger, and the nodes' event logs over the same window `wall` =
    (since, until) in Unix time). Each figure comes with the `ophiura avail` command that
    gives it, so a reader can ask the same question with other numbers."""
    from ophiura.availability import cluster_availability, parse_duration, starfish_availability
    from ophiura.availability.measured import LogError, from_logs

    storage = starfish_availability(SE_AVAILABILITY, n, q)
    out: dict[str, Any] = {
        "hierarchy": hierarchy,
        "assumptions": {
            "se_availability": SE_AVAILABILITY,
            "node_uptime": NODE_UPTIME,
            "node_downtime": NODE_DOWNTIME,
            "load_convention": storage.convention,
        },
        "promised_storage": {
            "n": n,
            "q": q,
            "se_availability": SE_AVAILABILITY,
            "can_lose_data": storage.reliability.can_lose_data,
            **storage.write.to_json(),
        },
        "promised_storage_args": f"ophiura avail --se-availability {SE_AVAILABILITY} -N {n} -Q {q}",
        "promised_storage_error": None,
        "promised_cluster": None,
        "promised_cluster_args": None,
        "promised_cluster_error": "no failover was measured",
        "measured_client": client_availability(ledger, start, end),
        "measured_cluster": None,
        "measured_cluster_args": None,
        "measured_cluster_error": "no event logs",
    }
    if failover and failover.get("detected_s") is not None:
        # Eq. 3's T_restore = T_detect + T_recover, as this run measured them
        detect = round(failover["detected_s"], 3)
        recover = round(max(0.0, failover["app_answering_s"] - detect), 3)
        cluster = cluster_availability(
            nodes,
            parse_duration(NODE_UPTIME),
            parse_duration(NODE_DOWNTIME),
            parse_duration(f"{recover:.3f}s"),
            parse_duration(f"{detect:.3f}s"),
        )
        out["promised_cluster"] = {
            "nodes": nodes,
            "detect_s": detect,
            "recover_s": recover,
            **cluster.cluster.to_json(),
        }
        out["promised_cluster_args"] = (
            f"ophiura avail --cluster --nodes {nodes} --uptime {NODE_UPTIME} --downtime "
            f"{NODE_DOWNTIME} --detect {detect:.3f}s --recover {recover:.3f}s"
        )
        out["promised_cluster_error"] = None
    if event_logs:
        out["measured_cluster_args"] = (
            f"ophiura avail --measured --hierarchy {hierarchy} --deadline {deadline:g}s "
            f"--since @{wall[0]:.3f} --until @{wall[1]:.3f} "
            + " ".join(f"--log {log.parent.name}/{log.name}" for log in event_logs)
        )
        try:
            measured = from_logs(
                event_logs, wall[0], wall[1], deadline=deadline, hierarchies=[hierarchy]
            )
        except (LogError, OSError) as exc:
            out["measured_cluster_error"] = f"{type(exc).__name__}: {exc}"
        else:
            h = measured.hierarchies.get(hierarchy)
            if h is None:
                out["measured_cluster_error"] = f"no {hierarchy} in the event logs"
            else:
                figures = h.to_json()
                figures.pop("intervals")
                out["measured_cluster"] = {
                    "hierarchy": hierarchy,
                    "events": measured.events,
                    "warnings": list(measured.warnings),
                    **figures,
                }
                out["measured_cluster_error"] = None
    return out


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
    if r and report.get("app") == "postgres":
        _render_postgres(con, r)
    elif r:
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
    if report.get("app") == "postgres":
        good = "OK: nothing committed was lost, pgbench's invariants hold"
    else:
        good = "OK: nothing acknowledged was lost"
    con.print(f"[bold green]{good}[/]" if ok else "[bold red]FAILED[/]")


def _render_postgres(con: Console, r: dict[str, Any]) -> None:
    """The PostgreSQL checks: the ledger, pgbench's runs and invariants, the outage split."""
    from ophiura.demo.postgres import outage_lines

    led, inv = r["ledger"], r["invariants"]
    style = "green" if r["lost"] == 0 else "bold red"
    con.print(
        f"ledger: {led['committed']} rows committed (an id counted only after its COMMIT "
        f"answered), {led['present']} present with their digest, [{style}]{led['lost']} "
        f"lost[/]; {led['in_doubt']} in doubt (no answer; {led['in_doubt_present']} of them "
        f"stored), {led['failed_attempts']} failed attempts"
    )
    for what, ids in (("missing", led["missing"]), ("wrong digest", led["wrong_digest"]),
                      ("rows nobody wrote", led["unexpected"])):  # fmt: skip
        if ids:
            con.print(f"[bold red]{what}:[/] {', '.join(map(str, ids))}")
    for b in r["pgbench"]:
        how = "aborted (connections lost)" if b.get("aborted") else f"exit {b.get('returncode')}"
        con.print(
            f"pgbench -c 4 -T {b['seconds']:g} (run {b['run']}): {b.get('processed')} "
            f"transactions, {b.get('failed')} failed, {b.get('tps')} tps, {how}"
        )
    style = "green" if inv["hold"] else "bold red"
    con.print(
        f"pgbench invariants: sum(accounts.abalance) {inv['sum_accounts_abalance']}, "
        f"sum(tellers.tbalance) {inv['sum_tellers_tbalance']}, sum(branches.bbalance) "
        f"{inv['sum_branches_bbalance']}, sum(history.delta) {inv['sum_history_delta']} "
        f"({inv['history_rows']} rows): [{style}]{'hold' if inv['hold'] else 'BROKEN'}[/]"
    )
    if r.get("outage_split"):
        con.print("the node crash as the client saw it (seconds after the crash began):")
        for line in outage_lines(r["outage_split"]):
            con.print(f"  {line}")


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
            parts.append(f"HE active {he['activated_s']:.3f} s")
        parts.append(f"epoch {tk['epoch_before']} -> {tk['epoch_after']}")
        parts.append(f"app answering {e['app_answering_s']:.2f} s")
        return ", ".join(parts)
    if e["name"] == "node-return":
        return (
            f"{e['node']} back; still on {', '.join(e['running_on'])}: "
            f"{'FAILED BACK' if e['failback'] else 'no automatic failback'}"
        )
    if e["name"] == "switchover":
        he = e.get("he") or {}
        took = f", HE active {he['activated_s']:.3f} s" if he.get("activated_s") else ""
        return (
            f"{e['from']} -> {e['to']}, running {e['hierarchy_running_s']:.2f} s{took}, "
            f"epoch {e['epoch_after']}, app answering {e['app_answering_s']:.2f} s"
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

    s, c, asm = a["promised_storage"], a["promised_cluster"], a["assumptions"]
    row(
        f"promised, storage: N={s['n']} Q={s['q']}, SEs up {float(s['se_availability']):.0%}",
        s,
        a["promised_storage_error"],
        a["promised_storage_args"],
    )
    row(
        f"promised, cluster: {c['nodes'] if c else 3} nodes failing every "
        f"{asm['node_uptime']}, repaired in {asm['node_downtime']}",
        c,
        a["promised_cluster_error"],
        a["promised_cluster_args"],
    )
    m = a["measured_cluster"]
    row(
        f"measured: {a['hierarchy']} in the nodes' event logs",
        m,
        a["measured_cluster_error"],
        None
        if m is None
        else f"{m['outage_count']} outages, {m['down_s']:.3f} s down of {m['observed_s']:.1f} s "
        "(ophiura avail --measured)",
    )
    cl = a["measured_client"]
    row(
        "measured: by the client",
        cl if cl["availability"] is not None else None,
        "no window",
        f"{cl['unavailable_s']:.3f} s without an ack (gap > {OUTAGE_THRESHOLD} s) of "
        f"{cl['window_s']:.1f} s",
    )
    con.print(t)
    con.print(
        "  Promised: StarFish Eq. 1 for the storage; Bottomley Eq. 3 for the cluster, with the "
        "detection and recovery times this run measured. Both rest on the assumed SE and node "
        "failure rates above, not on this run, which crashes something every few seconds and "
        "so measures far below them, by design. Measured: over the client's window; the event "
        "logs count the app up once its process has started, the client once it answers."
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"
