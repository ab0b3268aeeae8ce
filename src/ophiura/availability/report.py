"""Human output of `ophiura avail`, rendered from the same dicts `--json` prints, so a person
and a script never see different numbers."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from ophiura.availability.units import format_duration


def console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 120, highlight=False)


def _nines(n: int | None) -> str:
    return "inf" if n is None else str(n)


def _dt(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def _fig_row(label: str, fig: dict[str, Any]) -> list[str]:
    return [label, fig["percent"], _nines(fig["nines"]), _dt(fig["downtime_per_year_s"])]


def _fig_table(title: str | None = None) -> Table:
    t = Table(title=title)
    t.add_column("")
    t.add_column("availability", justify="right")
    t.add_column("nines", justify="right")
    t.add_column("downtime / year", justify="right")
    return t


def render_nines(d: dict[str, Any]) -> None:
    c = console()
    t = _fig_table()
    if d["given"] == "nines":
        label = f"availability {d['input']}"
    elif d["given"] == "class":
        label = f"class {d['input']}"
    elif d["given"] == "downtime":
        label = f"{_dt(d['downtime_per_year_s'])} down a year"
    else:
        label = f"{d['failures_per_year']:g} failures/year x {_dt(d['restore_s'])} to restore"
    t.add_row(*_fig_row(label, d))
    c.print(t)
    if d["class"] is None:
        c.print("no downtime at all: beyond every class of nines")
        return
    c.print(
        f"class {d['class']} ({d['class']} nines) allows "
        f"{_dt(d['class_allows_downtime_per_year_s'])} of downtime a year; class "
        f"{d['next_class']} allows {_dt(d['next_class_allows_downtime_per_year_s'])}"
    )


def _sim_lines(c: Console, sim: dict[str, Any]) -> None:
    verdict = {True: "inside", False: "OUTSIDE", None: "-"}[sim["formula_inside_ci"]]
    c.print(
        f"simulation: {sim['years']:g} years in {sim['replications']} replications "
        f"(seed {sim['seed']}), {sim['events']} events, {sim['outages']} outages, "
        f"{sim['wall_s']:.2f} s"
    )
    c.print(
        f"  availability {sim['availability']:.10f}, {sim['confidence']:.0%} CI "
        f"[{sim['ci_low']:.10f}, {sim['ci_high']:.10f}]"
    )
    if sim["formula_availability"] is not None:
        c.print(f"  {sim['formula']} = {sim['formula_availability']:.10f}: {verdict} the interval")
    if sim["mean_outage_s"] is not None:
        c.print(f"  mean outage {_dt(sim['mean_outage_s'])}")
    for w in sim["warnings"]:
        c.print(f"  [yellow]warning: {w}[/]")


# How SE (and HE) availability A became the load rho (starfish.rho_from_availability).
_LOADS = {
    "exact": "the model's load rho = (1-A)/A",
    "paper": "the paper's load rho = 1-A, --paper-load",
}


def render_starfish(d: dict[str, Any]) -> None:
    c = console()
    ro = d["read_only"]
    # The conversion matters only where an availability was turned into a load.
    converted = d["se_availability"] is not None or (ro is not None and ro["he_availability"])
    given = f"SE availability {d['se_availability']}: " if d["se_availability"] else ""
    c.print(
        f"StarFish N={d['n']} Q={d['q']}, {given}rho = {d['rho']:g}"
        + (f" ({_LOADS[d['load_convention']]})" if converted else "")
    )
    t = _fig_table()
    t.add_row(*_fig_row("one SE", d["single_se"]))
    t.add_row(*_fig_row(f"Eq. 1: at least Q={d['q']} of N={d['n']} SEs up", d["eq1"]))
    if ro is not None:
        he = ro["he_availability"] or f"rho_he {ro['rho_he']:g}"
        t.add_row(*_fig_row(f"Eq. 2: read-only consistency, HE {he}", ro["eq2"]))
    c.print(t)
    for note in d["reliability"]["notes"]:
        c.print(f"- {note}")
    if d.get("simulation"):
        _sim_lines(c, d["simulation"])


def render_table(d: dict[str, Any]) -> None:
    c = console()
    eq = "Eq. 2, read-only consistency" if d["equation"] == "eq2" else "Eq. 1"
    title = f"StarFish availability, number of nines ({eq}, {_LOADS[d['load_convention']]}"
    if d["equation"] == "eq2":
        title += f", rho(HE) = {d['rho_he']:g}"
    t = Table(title=title + ")", padding=(0, 1))
    t.add_column("SE availability", no_wrap=True)
    for col in d["columns"]:
        t.add_column(f"Q={col['q']}\nN={col['n']}", justify="right", no_wrap=True)
    for row in d["rows"]:
        t.add_row(
            f"{row['se_availability']} ({_nines(row['se_nines'])})",
            *(_nines(cell["nines"]) for cell in row["cells"]),
        )
    c.print(t)


def render_cluster(d: dict[str, Any]) -> None:
    c = console()
    c.print(
        f"{d['nodes']}-node cluster: each node up {_dt(d['uptime_s'])}, down "
        f"{_dt(d['downtime_s'])} on average ({d['failures_per_year']:.3g} failures a year); "
        f"failover T_restore = detect {_dt(d['detect_s'])} + recover {_dt(d['recover_s'])}"
    )
    t = _fig_table()
    t.add_row(*_fig_row("one node (Eq. 2)", d["node"]))
    t.add_row(*_fig_row(f"{d['nodes']} nodes (Eq. 3)", d["eq3"]))
    c.print(t)
    c.print(f"expected outage per failure of the active node: {_dt(d['downtime_per_failure_s'])}")
    if d.get("simulation"):
        _sim_lines(c, d["simulation"])


def render_measured(d: dict[str, Any], intervals: bool = False) -> None:
    c = console()
    p = d["period"]
    c.print(
        f"{d['events']} events from {d['files']} file(s), nodes {', '.join(d['nodes']) or '-'}; "
        f"period {p['since']} .. {p['until']} ({_dt(p['seconds'])})"
    )
    t = Table()
    for col in ("hierarchy", "availability", "nines", "up", "down", "outages", "MTTR",
                "longest", "MTBF"):  # fmt: skip
        t.add_column(col, justify="left" if col == "hierarchy" else "right")
    for name, h in d["hierarchies"].items():
        t.add_row(
            name,
            h["percent"] or "unknown",
            "-" if h["availability"] is None else _nines(h["nines"]),
            _dt(h["up_s"]),
            _dt(h["down_s"]),
            str(h["outage_count"]),
            _dt(h["mttr_s"]),
            _dt(h["longest_outage_s"]),
            _dt(h["mtbf_s"]),
        )
    c.print(t)
    for name, h in d["hierarchies"].items():
        if h["outages"]:
            o = Table(title=f"outages of {name}")
            for col in ("start", "end", "length", "cause", "restored by"):
                o.add_column(col)
            for out in h["outages"]:
                cause = out["cause"]
                what = " ".join(
                    str(x) for x in (cause.get("node"), cause.get("task")) if x is not None
                )
                if cause.get("peer"):
                    what += f" ({cause['peer']})"
                if cause.get("desc") and not cause.get("task"):
                    what = cause["desc"]
                rb = out["restored_by"]
                restored = "-" if rb is None else f"{rb.get('node')} {rb.get('task')}"
                end = out["end"] + (" (still down)" if out["open"] else "")
                o.add_row(out["start"], end, _dt(out["seconds"]), what, restored)
            c.print(o)
        if h["concurrent_s"]:
            c.print(f"[red]{name} ran on two nodes at once for {_dt(h['concurrent_s'])}[/]")
        if intervals:
            it = Table(title=f"timeline of {name}")
            for col in ("state", "start", "end", "length", "nodes"):
                it.add_column(col)
            for s in h["intervals"]:
                it.add_row(s["state"], s["start"], s["end"], _dt(s["seconds"]),
                           ", ".join(s["nodes"]))  # fmt: skip
            c.print(it)
    for w in d["warnings"]:
        c.print(f"[yellow]warning: {w}[/]")
