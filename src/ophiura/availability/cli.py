"""`ophiura avail`: availability before buying hardware (the formulas, checked by simulation)
and after running it (measured from the event logs).

One command, several questions; exactly one is asked per call:
  --nines A | --class K | --downtime-per-year D | --failures-per-year F   class of nines, budget
  --se-availability A (or --rho R) [-N -Q --read-only --simulate]       StarFish Eq. 1 / Eq. 2
  --table --se-availability A,B,... -Q 1,2,3 -N 2..5                      like Tables 1 and 2
  --cluster --nodes N --uptime T --downtime T --recover T [--detect T]    Bottomley Eq. 3
  --measured --log PATH [--log PATH ...] [--since T --until T]            from the event logs
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from ophiura.availability import cluster_model, measured, nines, starfish
from ophiura.availability import report as rpt
from ophiura.availability.units import exact, parse_duration, parse_instant, parse_probability

Result = tuple[dict[str, Any], Callable[..., None], dict[str, Any]]
NINES_QUESTIONS = ("nines_of", "klass", "downtime_per_year", "failures_per_year")


def _int_list(text: str, opt: str) -> list[int]:
    """`3`, `1,2,3`, `2..5` or `2..5,7`."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*(?:\.\.|-)\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise click.BadParameter(f"range {part!r} runs backwards", param_hint=opt)
            out.extend(range(lo, hi + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise click.BadParameter(
                f"{text!r} is not a number, list or range (3, 1,2,3, 2..5)", param_hint=opt
            )
    if any(v < 1 for v in out):
        raise click.BadParameter(f"{text!r}: values must be >= 1", param_hint=opt)
    return out


def _prob(text: str, opt: str, what: str) -> Fraction:
    try:
        return parse_probability(text, what)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=opt) from None


def _dur(text: str, opt: str) -> Fraction:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=opt) from None


def _num(text: str, opt: str) -> Fraction:
    try:
        return exact(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=opt) from None


def _single(values: list[int], opt: str) -> int:
    if len(values) != 1:
        raise click.BadParameter(
            f"one value here ({len(values)} given); lists and ranges are for --table",
            param_hint=opt,
        )
    return values[0]


def _emit(data: dict[str, Any], as_json: bool, render: Any, **kw: Any) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render(data, **kw)


@click.command("avail")
@click.option("--nines", "nines_of", metavar="A", help="Class of nines of availability A.")
@click.option("--class", "klass", type=int, metavar="K", help="Availability and budget of class K.")
@click.option("--downtime-per-year", metavar="T", help="Availability of T down a year (3m, 8h).")
@click.option("--failures-per-year", metavar="F", help="Failures a year (with --restore or "
              "--detect/--recover): HATS' downtime = F x T_restore.")  # fmt: skip
@click.option("--restore", metavar="T", help="Time to restore after a failure (18s).")
@click.option("--se-availability", metavar="A[,A...]", help="Availability of one SE (0.99, 99%).")
@click.option("--rho", metavar="R", help="SE load lambda/mu instead of --se-availability.")
@click.option("-N", "n_text", metavar="N", help="Number of SEs (--table: list or range 2..5).")
@click.option("-Q", "q_text", metavar="Q", help="Write quorum (--table: list or range 1..3).")
@click.option("--read-only", is_flag=True, help="Eq. 2: read-only consistency (needs HE load).")
@click.option("--he-availability", metavar="A", help="HE availability for --read-only.")
@click.option("--rho-he", metavar="R", help="HE load instead of --he-availability.")
@click.option("--paper-load", is_flag=True, help="rho = 1-A as the paper converts, which "
              "reproduces its Tables 1 and 2; default rho = (1-A)/A, the model's own "
              "A(1,1).")  # fmt: skip
@click.option("--exact-load", is_flag=True, help="rho = (1-A)/A: the default (kept for scripts).")
@click.option("--table", "as_table", is_flag=True, help="A grid of SE availability x (Q, N).")
@click.option("--simulate", is_flag=True, help="Check the formula by Monte Carlo simulation.")
@click.option("--years", type=float, default=1000.0, show_default=True, help="Simulated time.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--replications", type=int, default=20, show_default=True)
@click.option("--confidence", type=float, default=0.95, show_default=True)
@click.option("--se-mttr", default="4h", show_default=True, help="SE mean time to repair (sim).")
@click.option("--cluster", "as_cluster", is_flag=True, help="Bottomley Eq. 3 for N nodes.")
@click.option("--nodes", type=int, help="Nodes in the cluster.")
@click.option("--uptime", metavar="T", help="Mean time a node runs between failures (30d).")
@click.option("--downtime", metavar="T", help="Mean time to repair a node (4h).")
@click.option("--recover", metavar="T", help="T_recover: restart the service elsewhere (14s).")
@click.option("--detect", metavar="T", help="T_detect: notice the failure (2s). Default 0.")
@click.option("--measured", "as_measured", is_flag=True, help="Availability from event logs.")
@click.option("--log", "logs", multiple=True, type=click.Path(path_type=Path),
              help="A node's event log file or directory (repeat for every node).")  # fmt: skip
@click.option("--since", metavar="TIME", help="ISO 8601, @EPOCH, or an age: 7d, 1h30m.")
@click.option("--until", metavar="TIME", default="now", show_default=True)
@click.option("--deadline", metavar="T", default="0", show_default=True,
              help="Heartbeat deadline: date a dead node's outage back by this much.")  # fmt: skip
@click.option("--hierarchy", "only", multiple=True, help="Only this hierarchy (repeatable).")
@click.option("--intervals", is_flag=True, help="Also print every up/down interval.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG of availability vs rho (StarFish Figs. 3 and 4).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every number).")
def avail(**o: Any) -> None:
    """Availability before buying hardware (formulas, checked by simulation) and after
    (measured from the event logs). One question per call:

    \b
      --nines 0.99987 | --class 3 | --downtime-per-year 3m | --failures-per-year 10 --restore 18s
      --se-availability 0.99 -N 3 -Q 2 [--read-only --he-availability 0.999] [--simulate]
      --table --se-availability 0.9,0.99,0.999,0.9999 -Q 1,2,3 -N 2..5
      --cluster --nodes 2 --uptime 30d --downtime 4h --detect 2s --recover 16s [--simulate]
      --measured --log DIR [--log DIR ...] [--since 7d] [--until now] [--deadline 5s]
      --plot FILE

    Formulas and sources: docs/availability.md.
    """
    modes = {
        "nines": any(o[k] is not None for k in NINES_QUESTIONS),
        "table": o["as_table"],
        "starfish": not o["as_table"]
        and (o["se_availability"] is not None or o["rho"] is not None),
        "cluster": o["as_cluster"],
        "measured": o["as_measured"] or bool(o["logs"]),
    }
    chosen = [m for m, on in modes.items() if on]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one question at a time (got {', '.join(chosen)})")
    if not chosen:
        if o["plot_path"] is not None:
            path = _plot(o)
            if o["as_json"]:
                click.echo(json.dumps({"mode": "plot", "plot": str(path)}, indent=2))
            return
        raise click.UsageError(
            "nothing to compute: give --nines A, --se-availability A, --table, --cluster or "
            "--measured (see ophiura avail --help)"
        )
    mode = chosen[0]
    if o["simulate"] and mode not in ("starfish", "cluster"):
        raise click.UsageError("--simulate goes with --se-availability/--rho or --cluster")
    if o["plot_path"] is not None and mode not in ("starfish", "table"):
        raise click.UsageError("--plot goes with --se-availability, --table, or alone")
    try:
        data, render, kw = {
            "nines": _nines_mode,
            "table": _table_mode,
            "starfish": _starfish_mode,
            "cluster": _cluster_mode,
            "measured": _measured_mode,
        }[mode](o)
    except (starfish.ModelError, cluster_model.ClusterModelError, measured.LogError) as exc:
        raise click.UsageError(str(exc)) from None
    if o["plot_path"] is not None:
        data["plot"] = str(_plot(o))
    _emit(data, o["as_json"], render, **kw)


def _nines_mode(o: dict[str, Any]) -> Result:
    given = [k for k in NINES_QUESTIONS if o[k] is not None]
    if len(given) > 1:
        raise click.UsageError("give one of --nines, --class, --downtime-per-year, "
                               "--failures-per-year")  # fmt: skip
    extra: dict[str, Any] = {}
    if o["nines_of"] is not None:
        a = _prob(o["nines_of"], "--nines", "availability")
        kind, shown = "nines", o["nines_of"]
    elif o["klass"] is not None:
        if o["klass"] < 0:
            raise click.BadParameter("a class of nines is >= 0", param_hint="--class")
        a = nines.availability_for_class(o["klass"])
        kind, shown = "class", str(o["klass"])
    elif o["downtime_per_year"] is not None:
        d = _dur(o["downtime_per_year"], "--downtime-per-year")
        try:
            a = nines.availability_from_downtime(d)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--downtime-per-year") from None
        kind, shown = "downtime", o["downtime_per_year"]
    else:
        f = _num(o["failures_per_year"], "--failures-per-year")
        if o["restore"] is not None:
            if o["detect"] is not None or o["recover"] is not None:
                raise click.UsageError("give --restore, or --detect and --recover, not both")
            t = _dur(o["restore"], "--restore")
        elif o["recover"] is not None:
            t = nines.restore_time(
                _dur(o["detect"] or "0", "--detect"), _dur(o["recover"], "--recover")
            )
        else:
            raise click.UsageError("--failures-per-year needs --restore (or --detect/--recover)")
        try:
            a = nines.availability_from_failures(f, t)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        kind, shown = "failures", o["failures_per_year"]
        extra = {"failures_per_year": float(f), "restore_s": float(t)}
    data = {"mode": "nines", "given": kind, "input": shown, **extra, **nines.nines_summary(a)}
    return data, rpt.render_nines, {}


def _convention(o: dict[str, Any]) -> starfish.Convention:
    """The model's own load by default, so that "one SE" and Eq. 1 agree; the paper's with
    --paper-load (docs/availability.md, "From SE availability to rho")."""
    if o["paper_load"] and o["exact_load"]:
        raise click.UsageError("give --paper-load or --exact-load, not both")
    return "paper" if o["paper_load"] else "exact"


def _he(o: dict[str, Any]) -> tuple[Fraction | None, Fraction | None]:
    """(he_availability, rho_he) for --read-only."""
    if not o["read_only"]:
        if o["he_availability"] is not None or o["rho_he"] is not None:
            raise click.UsageError("--he-availability/--rho-he go with --read-only")
        return None, None
    if (o["he_availability"] is None) == (o["rho_he"] is None):
        raise click.UsageError("--read-only needs --he-availability A (or --rho-he R)")
    if o["he_availability"] is not None:
        return _prob(o["he_availability"], "--he-availability", "HE availability"), None
    return None, _num(o["rho_he"], "--rho-he")


def _starfish_mode(o: dict[str, Any]) -> Result:
    if o["se_availability"] is not None and o["rho"] is not None:
        raise click.UsageError("give --se-availability or --rho, not both")
    n = _single(_int_list(o["n_text"] or "3", "-N"), "-N")
    q = _single(_int_list(o["q_text"] or "2", "-Q"), "-Q")
    if q > n:
        raise click.UsageError(f"Q = {q} with N = {n}: the write quorum cannot exceed N")
    he_a, rho_he = _he(o)
    a = None
    if o["se_availability"] is not None:
        if "," in o["se_availability"]:
            raise click.BadParameter("one value here; lists are for --table",
                                     param_hint="--se-availability")  # fmt: skip
        a = _prob(o["se_availability"], "--se-availability", "SE availability")
    result = starfish.starfish_availability(
        a,
        n,
        q,
        rho=None if a is not None else _num(o["rho"], "--rho"),
        he_availability=he_a,
        rho_he=rho_he,
        convention=_convention(o),
    )
    data = {"mode": "starfish", **result.to_json(), "simulation": None}
    if o["simulate"]:
        from ophiura.availability.simulate import simulate_quorum

        try:
            sim = simulate_quorum(
                n,
                q,
                result.rho,
                years=o["years"],
                se_mttr_s=float(_dur(o["se_mttr"], "--se-mttr")),
                replications=o["replications"],
                seed=o["seed"],
                confidence=o["confidence"],
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        data["simulation"] = sim.to_json()
    return data, rpt.render_starfish, {}


def _table_mode(o: dict[str, Any]) -> Result:
    if o["se_availability"] is None:
        raise click.UsageError("--table needs --se-availability A,B,... (e.g. 0.9,0.99,0.999)")
    avs = [
        _prob(x, "--se-availability", "SE availability") for x in o["se_availability"].split(",")
    ]
    qs = _int_list(o["q_text"] or "1..3", "-Q")
    ns = _int_list(o["n_text"] or "2..5", "-N")
    cols = [(q, n) for q in qs for n in ns if q <= n]
    if not cols:
        raise click.UsageError(f"no column with Q <= N (Q {qs}, N {ns})")
    he_a, rho_he = _he(o)
    t = starfish.table(avs, cols, rho_he=rho_he, he_availability=he_a, convention=_convention(o))
    return {"mode": "table", **t.to_json()}, rpt.render_table, {}


def _cluster_mode(o: dict[str, Any]) -> Result:
    missing = [f"--{k}" for k in ("nodes", "uptime", "downtime", "recover") if o[k] is None]
    if missing:
        raise click.UsageError(f"--cluster needs {', '.join(missing)}")
    if o["nodes"] < 1:
        raise click.BadParameter("a cluster has at least 1 node", param_hint="--nodes")
    res = cluster_model.cluster_availability(
        o["nodes"],
        _dur(o["uptime"], "--uptime"),
        _dur(o["downtime"], "--downtime"),
        _dur(o["recover"], "--recover"),
        _dur(o["detect"] or "0", "--detect"),
    )
    data = {"mode": "cluster", **res.to_json(), "simulation": None}
    if o["simulate"]:
        from ophiura.availability.simulate import simulate_cluster

        try:
            sim = simulate_cluster(
                res.nodes,
                float(res.t_up),
                float(res.t_down),
                float(res.t_recover),
                float(res.t_detect),
                years=o["years"],
                replications=o["replications"],
                seed=o["seed"],
                confidence=o["confidence"],
                formula=res.cluster.value,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        data["simulation"] = sim.to_json()
    return data, rpt.render_cluster, {}


def _measured_mode(o: dict[str, Any]) -> Result:
    if not o["logs"]:
        raise click.UsageError("--measured needs --log PATH (a node's events dir or file)")
    now = time.time()
    try:
        since = None if o["since"] is None else parse_instant(o["since"], now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    try:
        until = parse_instant(o["until"], now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--until") from None
    report = measured.from_logs(
        o["logs"],
        since,
        until,
        deadline=_dur(o["deadline"], "--deadline"),
        hierarchies=o["only"] or None,
    )
    data = {"mode": "measured", **report.to_json()}
    return data, rpt.render_measured, {"intervals": o["intervals"]}


def _plot(o: dict[str, Any]) -> Path:
    from ophiura.availability.plot import PlotUnavailable, plot_availability

    n = _single(_int_list(o["n_text"] or "3", "-N"), "-N")
    try:
        path = plot_availability(o["plot_path"], n=n)
    except PlotUnavailable as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.BadParameter(f"cannot write {o['plot_path']}: {exc.strerror}",
                                 param_hint="--plot") from None  # fmt: skip
    if not o["as_json"]:
        click.echo(f"plot written to {path}")
    return path
