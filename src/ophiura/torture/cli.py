"""`ophiura torture`: option parsing only; the run is `runner.run`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from ophiura.sizes import parse_size
from ophiura.torture.runner import PLANTS, Options, failed, one_line, plant_wired, run
from ophiura.torture.schedule import (
    Schedule,
    default_cluster_kinds,
    default_kinds,
    kind_table,
    make_cluster_schedule,
    make_schedule,
)


def _kinds(value: str | None, mode: str) -> list[str]:
    if not value:
        return default_cluster_kinds() if mode == "cluster" else default_kinds()
    table = kind_table(mode)
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    bad = [k for k in kinds if k not in table]
    if bad:
        raise click.BadParameter(
            f"unknown {mode} fault kinds {bad}; known: {', '.join(table)}", param_hint="--kinds"
        )
    return kinds


@click.command("torture")
@click.option(
    "--mode",
    type=click.Choice(["storage", "cluster"]),
    default="storage",
    show_default=True,
    help="storage: SE/HE faults on 127.0.0.1; cluster: node faults against the demo's "
    "three-node cluster in network namespaces (root only).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the first run.")
@click.option(
    "--runs",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Runs with seeds SEED, SEED+1, ...",
)
@click.option(
    "--duration",
    type=click.FloatRange(5, 3600),
    default=60.0,
    show_default=True,
    help="Seconds of workload and faults per run (then healing and checks).",
)
@click.option("--kinds", default=None, help="Comma-separated fault kinds (default: all).")
@click.option(
    "--mean-gap",
    type=click.FloatRange(0.1, 60),
    default=None,
    help="Mean seconds between fault starts (faults overlap) [default: 1.5; cluster: 5].",
)
@click.option(
    "--cache/--no-cache",
    default=None,
    help="HE read cache on/off (default: drawn from the seed, on in 3 runs of 4).",
)
@click.option(
    "--replay",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Rerun a saved schedule (a .schedule.json or a run's JSON).",
)
@click.option(
    "--json",
    "json_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("torture-results"),
    show_default=True,
    help="Directory for torture-SEED.json and torture-SEED.schedule.json.",
)
@click.option("--volume-size", default="16M", show_default=True)
@click.option("--writers", type=click.IntRange(1, 16), default=3, show_default=True)
@click.option("--readers", type=click.IntRange(0, 16), default=2, show_default=True)
@click.option(
    "--iscsi/--no-iscsi",
    default=True,
    show_default=True,
    help="Writer 1 and reader 1 use iSCSI (READ/WRITE(16), FUA, SYNCHRONIZE CACHE), the rest NBD.",
)
@click.option("--heal-timeout", type=click.FloatRange(5, 600), default=60.0, show_default=True)
@click.option(
    "--plant",
    type=click.Choice(sorted(PLANTS)),
    default=None,
    help="TEST ONLY: plant a bug; the run must then fail.",
)
@click.option("--keep", is_flag=True, help="Keep the work dir (logs, data files).")
@click.option(
    "--save-history",
    is_flag=True,
    help="Also save every operation to torture-SEED.history.jsonl.gz (to look into a failure).",
)
@click.option("--list-kinds", is_flag=True, help="Print the fault table and exit.")
def torture(
    mode: str,
    seed: int,
    runs: int,
    duration: float,
    kinds: str | None,
    mean_gap: float | None,
    cache: bool | None,
    replay: Path | None,
    json_dir: Path,
    volume_size: str,
    writers: int,
    readers: int,
    iscsi: bool,
    heal_timeout: float,
    plant: str | None,
    keep: bool,
    save_history: bool,
    list_kinds: bool,
) -> None:
    """Randomized fault injection against real SE and HE processes on 127.0.0.1, checked
    sector by sector. Exit 1 if anything acknowledged was lost, a read was stale, data was
    corrupt, SEs diverged, two HEs acked under one ballot, or the cluster did not heal."""
    if list_kinds:
        for k in kind_table(mode).values():
            need = f" [needs {k.needs}]" if k.needs else ""
            click.echo(f"{k.name:24} {k.target:4} {k.min_s:g}-{k.max_s:g}s{need}  {k.doc}")
        return
    if replay is not None:
        try:
            mode = Schedule.load(replay).mode
        except ValueError as exc:
            raise click.ClickException(f"--replay: {exc}") from exc
    kind_list = _kinds(kinds, mode)
    if mode == "cluster":
        _cluster(seed, runs, duration, kind_list, mean_gap or 5.0, replay, json_dir, keep)
        return
    mean_gap = mean_gap or 1.5
    try:
        size = parse_size(volume_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--volume-size") from exc
    if size < (1 << 20) or size % 4096:
        raise click.BadParameter("must be >= 1M and a multiple of 4096", param_hint="--volume-size")
    if plant and PLANTS[plant][0] == "he" and not plant_wired():
        click.secho(
            f"warning: --plant {plant} needs the HE to read OPHIURA_TORTURE_PLANT, which it does "
            "not yet: this run plants nothing",
            fg="yellow",
            err=True,
        )
    json_dir.mkdir(parents=True, exist_ok=True)
    any_failed = False
    for i in range(runs):
        if replay is not None:
            try:
                schedule = Schedule.load(replay)
            except ValueError as exc:
                raise click.ClickException(f"--replay: {exc}") from exc
        else:
            schedule = make_schedule(seed + i, duration, kind_list, mean_gap, cache)
        sched_path = json_dir / f"torture-{schedule.seed}.schedule.json"
        schedule.save(sched_path)
        counts = ", ".join(f"{k} {n}" for k, n in sorted(schedule.counts().items()))
        click.echo(
            f"seed={schedule.seed} cache={'on' if schedule.cache else 'off'} "
            f"delay={schedule.se_delay_ms} schedule={sched_path} ({len(schedule.faults)} faults: "
            f"{counts})"
        )
        for f in schedule.faults:
            click.echo(
                f"  {f.at:7.2f}s {f.kind:22} {f.target:3} {f.duration:5.2f}s {f.params or ''}"
            )
        opts = Options(
            json_path=json_dir / f"torture-{schedule.seed}.json",
            writers=writers,
            readers=readers,
            iscsi=iscsi,
            volume_size=size,
            heal_timeout=heal_timeout,
            plant=plant or "",
            keep=keep,
            history_path=json_dir / f"torture-{schedule.seed}.history.jsonl.gz"
            if save_history
            else None,
        )
        try:
            result = asyncio.run(run(opts, schedule))
        except (RuntimeError, OSError) as exc:
            raise click.ClickException(f"seed {schedule.seed}: setup failed: {exc}") from exc
        opts.json_path.write_text(json.dumps(result, indent=1) + "\n")
        click.echo(one_line(result))
        for ex in result["examples"][:5]:
            click.echo(f"  {ex}")
        if result["heal_note"]:
            click.echo(f"  heal: {result['heal_note']}")
        click.echo(f"  json: {opts.json_path}")
        any_failed |= failed(result)
        if replay is not None:
            break
    raise SystemExit(1 if any_failed else 0)


def _cluster(
    seed: int,
    runs: int,
    duration: float,
    kinds: list[str],
    mean_gap: float,
    replay: Path | None,
    json_dir: Path,
    keep: bool,
) -> None:
    """The cluster mode's loop over seeds (see torture/cluster.py)."""
    from ophiura.torture.cluster import (
        ClusterOptions,
        cluster_failed,
        cluster_one_line,
        run_cluster,
        unavailable,
    )

    why = unavailable()
    if why:
        raise click.ClickException(why)
    json_dir.mkdir(parents=True, exist_ok=True)
    any_failed = False
    for i in range(runs):
        if replay is not None:
            schedule = Schedule.load(replay)
        else:
            schedule = make_cluster_schedule(seed + i, duration, kinds, mean_gap)
        stem = f"torture-cluster-{schedule.seed}"
        sched_path = json_dir / f"{stem}.schedule.json"
        schedule.save(sched_path)
        counts = ", ".join(f"{k} {n}" for k, n in sorted(schedule.counts().items()))
        click.echo(
            f"seed={schedule.seed} mode=cluster schedule={sched_path} "
            f"({len(schedule.faults)} faults: {counts})"
        )
        for f in schedule.faults:
            click.echo(
                f"  {f.at:7.2f}s {f.kind:14} {f.target:5} {f.duration:5.2f}s {f.params or ''}"
            )
        opts = ClusterOptions(json_path=json_dir / f"{stem}.json", keep=keep)
        result = run_cluster(opts, schedule)
        opts.json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
        click.echo(cluster_one_line(result), color=False)
        for ex in result.get("split_brain_examples", [])[:5]:
            click.echo(f"  {ex}")
        for what in ("lost_ids", "wrong_ids"):
            if result.get(what):
                click.echo(f"  {what}: {' '.join(result[what])}")
        if result["heal_note"]:
            click.echo(f"  heal: {result['heal_note']}")
        if keep:
            click.echo(f"  workdir (logs): {result['workdir']}")
        click.echo(f"  json: {opts.json_path}")
        any_failed |= cluster_failed(result)
        if replay is not None:
            break
    raise SystemExit(1 if any_failed else 0)
