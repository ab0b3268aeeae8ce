"""`python -m bench` (`make bench`): ophiura target against tgtd on the same backing file.

Both targets serve one preallocated file (written with data, so reads hit real blocks rather
than holes), one after the other on free 127.0.0.1 ports, and go through the same workloads:

  reads  (iscsi-perf):       4 KiB QD32 random (IOPS), 256 KiB QD32 sequential (MiB/s),
                             4 KiB QD1 random (latency = 1/IOPS)
  writes (qemu-img bench -w): 4 KiB QD32 (IOPS), 256 KiB QD32 (MiB/s), 4 KiB QD1 (latency)
  memory: peak RSS (VmHWM) after the workloads, and after 4 KiB random reads over a 1 TiB
          sparse thin volume (RSS must not grow with the volume)

and the table gives ophiura/tgtd per line against the goals of issue 2 (>= 0.5x IOPS,
>= 0.8x MiB/s, <= 2x latency, RSS < 150 MB). `--quick` for a short run, `--json` for machines,
`--markdown` for docs/benchmarks.md, `--check` to exit 1 when a goal is missed.

`python -m bench replication` (or `--suite replication`) runs the StarFish suite instead:
replicated volumes against the direct target, see `bench/replication.py`.
`python -m bench failover` measures cluster failover against keepalived, see `bench/failover.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import (
    Server,
    ServerError,
    make_sparse,
    ophiura_target_unavailable,
    start_ophiura,
    start_tgtd,
    tgtd_unavailable,
)
from bench.workloads import (
    Measurement,
    WorkloadError,
    block_length,
    iscsi_perf,
    qemu_img_bench_write,
)

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
RSS_LIMIT_MB = 150.0
TOOLS = ("iscsi-perf", "iscsi-readcapacity16", "qemu-img")


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    tool: str  # "perf" (reads) or "qemu" (writes)
    io_size: int
    depth: int
    random: bool
    metric: str  # "iops", "mib_per_s" or "latency_us"
    goal: float  # ratio ophiura/tgtd: at least this (higher is better) or at most (latency)


WORKLOADS = (
    Workload("read_4k_qd32", "4 KiB QD32 random read", "perf", 4 * KIB, 32, True, "iops", 0.5),
    Workload("read_256k_qd32", "256 KiB QD32 seq. read", "perf", 256 * KIB, 32, False,
             "mib_per_s", 0.8),
    Workload("read_4k_qd1", "4 KiB QD1 random read", "perf", 4 * KIB, 1, True, "latency_us", 2.0),
    Workload("write_4k_qd32", "4 KiB QD32 write", "qemu", 4 * KIB, 32, False, "iops", 0.5),
    Workload("write_256k_qd32", "256 KiB QD32 write", "qemu", 256 * KIB, 32, False,
             "mib_per_s", 0.8),
    Workload("write_4k_qd1", "4 KiB QD1 write", "qemu", 4 * KIB, 1, False, "latency_us", 2.0),
)  # fmt: skip
UNITS = {"iops": "IOPS", "mib_per_s": "MiB/s", "latency_us": "µs"}


@dataclass
class TargetRun:
    kind: str
    measurements: dict[str, Measurement] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    peak_rss_kib: int | None = None
    big_volume_rss_kib: int | None = None
    log: str = ""

    def value(self, workload: Workload) -> float | None:
        m = self.measurements.get(workload.key)
        return None if m is None else float(getattr(m, workload.metric))

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "measurements": {k: m.to_json() for k, m in self.measurements.items()},
            "errors": self.errors,
            "peak_rss_kib": self.peak_rss_kib,
            "big_volume_rss_kib": self.big_volume_rss_kib,
            "log": self.log,
        }


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_backing(path: Path, size: int) -> Path:
    """A file of `size` bytes full of data (not holes); reused when already prepared."""
    marker = path.with_suffix(".prepared")
    if path.exists() and path.stat().st_size == size and marker.exists():
        return path
    say(f"preparing {path} ({size // MIB} MiB of data)")
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = bytearray(os.urandom(MIB))
    with open(path, "wb") as f:
        for i in range(size // MIB):
            chunk[:8] = i.to_bytes(8, "little")
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    marker.write_text(f"{size}\n")
    return path


def start(kind: str, backing: Path, size: int, workdir: Path, *, thin: bool = False) -> Server:
    log = workdir / f"{kind}{'-thin' if thin else ''}-{backing.stem}.log"
    if kind == "tgtd":
        return start_tgtd(backing, log, thin=thin)
    return start_ophiura(backing, f"{size // MIB}M", log, thin=thin,
                         state_dir=workdir / "ophiura-state")  # fmt: skip


def run_workload(w: Workload, url: str, block: int, seconds: int, disk: int) -> Measurement:
    if w.tool == "perf":
        return iscsi_perf(w.key, url, io_size=w.io_size, depth=w.depth, seconds=seconds,
                          random=w.random, block=block)  # fmt: skip
    return qemu_img_bench_write(w.key, url, io_size=w.io_size, depth=w.depth, seconds=seconds,
                                max_count=max(1000, 4 * disk // w.io_size))  # fmt: skip


def bench_target(kind: str, backing: Path, size: int, args: argparse.Namespace) -> TargetRun:
    result = TargetRun(kind)
    say(f"== {kind}")
    try:
        server = start(kind, backing, size, args.workdir)
    except ServerError as exc:
        result.errors["start"] = str(exc)
        say(f"   {kind} did not start: {exc}")
        return result
    result.log = str(server.log_path)
    try:
        url = server.url()
        block = block_length(url)
        for w in WORKLOADS:
            if args.only and w.key not in args.only:
                continue
            if not server.alive():
                result.errors[w.key] = f"{kind} is not running any more (exit {server.proc.poll()})"
                break
            try:
                m = run_workload(w, url, block, args.seconds, size)
            except WorkloadError as exc:
                result.errors[w.key] = str(exc)
                say(f"   {w.title}: ERROR {exc}")
                continue
            result.measurements[w.key] = m
            value = getattr(m, w.metric)
            say(f"   {w.title}: {value:,.1f} {UNITS[w.metric]} ({m.iops:,.0f} ops/s)")
        server.sample_rss()
        result.peak_rss_kib = server.peak_rss_kib
    except WorkloadError as exc:
        result.errors["setup"] = str(exc)
    finally:
        code = server.stop()
        if kind == "ophiura" and code != 0:
            result.errors["stop"] = f"ophiura target exited {code} on SIGTERM"
    if args.big_volume:
        result.big_volume_rss_kib = big_volume_rss(kind, args, result)
    return result


def big_volume_rss(kind: str, args: argparse.Namespace, result: TargetRun) -> int | None:
    """Peak RSS serving a 1 TiB sparse thin volume after random 4 KiB reads all over it."""
    backing = make_sparse(args.workdir / "big-sparse.img", TIB)
    try:
        server = start(kind, backing, TIB, args.workdir, thin=True)
    except ServerError as exc:
        result.errors["big_volume"] = str(exc)
        return None
    try:
        url = server.url()
        iscsi_perf("big_volume", url, io_size=4 * KIB, depth=32, seconds=max(2, args.seconds // 2),
                   random=True, block=block_length(url))  # fmt: skip
        return server.sample_rss()
    except WorkloadError as exc:
        result.errors["big_volume"] = str(exc)
        return server.sample_rss()
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            backing.unlink()


# ------------------------------------------------------------------------------------ report


def ratio(w: Workload, ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def meets(w: Workload, r: float | None) -> bool | None:
    if r is None:
        return None
    return r <= w.goal if w.metric == "latency_us" else r >= w.goal


def rows(runs: dict[str, TargetRun]) -> list[dict[str, object]]:
    ours, theirs = runs.get("ophiura"), runs.get("tgtd")
    table: list[dict[str, object]] = []
    for w in WORKLOADS:
        a = ours.value(w) if ours else None
        b = theirs.value(w) if theirs else None
        r = ratio(w, a, b)
        goal = f"<= {w.goal}x" if w.metric == "latency_us" else f">= {w.goal}x"
        table.append({"key": w.key, "title": f"{w.title} ({UNITS[w.metric]})", "ophiura": a,
                      "tgtd": b, "ratio": r, "goal": goal, "ok": meets(w, r)})  # fmt: skip
    for key, title in (("peak_rss_kib", "peak RSS (MB)"),
                       ("big_volume_rss_kib", "peak RSS, 1 TiB thin volume (MB)")):  # fmt: skip
        a_kib = getattr(ours, key) if ours else None
        b_kib = getattr(theirs, key) if theirs else None
        a = a_kib / 1024 if a_kib else None
        b = b_kib / 1024 if b_kib else None
        table.append({"key": key, "title": title, "ophiura": a, "tgtd": b,
                      "ratio": ratio(WORKLOADS[0], a, b), "goal": f"< {RSS_LIMIT_MB:.0f} MB",
                      "ok": None if a is None else a < RSS_LIMIT_MB})  # fmt: skip
    return table


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(table: list[dict[str, object]]) -> str:
    lines = ["| workload | ophiura | tgtd | ophiura/tgtd | goal | met |",
             "|---|---:|---:|---:|---|---|"]  # fmt: skip
    for row in table:
        lines.append(f"| {row['title']} | {_fmt(row['ophiura'])} | {_fmt(row['tgtd'])} | "
                     f"{_fmt(row['ratio'], 2)} | {row['goal']} | {_fmt(row['ok'])} |")  # fmt: skip
    return "\n".join(lines)


def print_table(table: list[dict[str, object]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but the table must not depend on it
        print(markdown(table))
        return
    t = Table(title="ophiura target vs tgtd")
    for name, justify in (
        ("workload", "left"),
        ("ophiura", "right"),
        ("tgtd", "right"),
        ("ophiura/tgtd", "right"),
        ("goal", "left"),
        ("met", "left"),
    ):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in table:
        ok = row["ok"]
        style = "" if ok is None else ("green" if ok else "red")
        t.add_row(str(row["title"]), _fmt(row["ophiura"]), _fmt(row["tgtd"]),
                  _fmt(row["ratio"], 2), str(row["goal"]), _fmt(ok), style=style)  # fmt: skip
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(t)


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> dict[str, object]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    libiscsi = _version(["dpkg-query", "-W", "-f", "${Version}", "libiscsi-bin"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tgtd": _version(["tgtd", "-V"]),
        "qemu-img": _version(["qemu-img", "--version"]),
        "libiscsi-bin": libiscsi,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256 MiB file, 3 s per workload")
    p.add_argument("--size", default=None, help="backing file size in MiB (default 1024)")
    p.add_argument("--seconds", type=int, default=None, help="per workload (default 10)")
    p.add_argument("--targets", default="tgtd,ophiura", help="comma-separated: tgtd,ophiura")
    p.add_argument("--only", default="", help="comma-separated workload keys")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ophiura-bench"))
    p.add_argument("--no-big-volume", dest="big_volume", action="store_false",
                   help="skip the 1 TiB sparse volume RSS check")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = p.parse_args(argv)
    args.size = int(args.size or (256 if args.quick else 1024)) * MIB
    args.seconds = args.seconds or (3 if args.quick else 10)
    args.only = {k for k in args.only.split(",") if k}
    return args


SUITES = ("target", "replication", "failover")


def split_suite(argv: list[str]) -> tuple[str, list[str]]:
    """`python -m bench [target|replication] ...` or `--suite NAME`; the target suite by default."""
    rest = list(argv)
    if rest and rest[0] in SUITES:
        return rest[0], rest[1:]
    for i, arg in enumerate(rest):
        if arg == "--suite" and i + 1 < len(rest):
            return rest[i + 1], rest[:i] + rest[i + 2 :]
        if arg.startswith("--suite="):
            return arg.split("=", 1)[1], rest[:i] + rest[i + 1 :]
    return "target", rest


def main(argv: list[str] | None = None) -> int:
    suite, argv = split_suite(sys.argv[1:] if argv is None else argv)
    if suite not in SUITES:
        say(f"unknown suite {suite!r} (one of: {', '.join(SUITES)})")
        return 2
    if suite == "replication":
        from bench.replication import main as replication_main

        return replication_main(argv)
    if suite == "failover":  # the HA cluster against keepalived, in network namespaces (root)
        from bench.failover import main as failover_main

        return failover_main(argv)
    args = parse_args(argv)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        say(f"missing tools: {', '.join(missing)} (apt-get install libiscsi-bin qemu-utils "
            "qemu-block-extra tgt)")  # fmt: skip
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    backing = prepare_backing(args.workdir / f"disk-{args.size // MIB}M.img", args.size)
    runs: dict[str, TargetRun] = {}
    skipped: dict[str, str] = {}
    for kind in [k.strip() for k in args.targets.split(",") if k.strip()]:
        reason = tgtd_unavailable() if kind == "tgtd" else ophiura_target_unavailable()
        if reason:
            skipped[kind] = reason
            say(f"== {kind}: not available: {reason}")
            continue
        runs[kind] = bench_target(kind, backing, args.size, args)
    table = rows(runs)
    report = {
        "machine": machine(),
        "command": " ".join(["python -m bench", *argv]),
        "backing": {"path": str(backing), "size": args.size},
        "seconds_per_workload": args.seconds,
        "targets": {k: r.to_json() for k, r in runs.items()},
        "not_available": skipped,
        "table": table,
    }
    (args.workdir / "results.json").write_text(json.dumps(report, indent=2, default=str))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    elif args.markdown:
        print(markdown(table))
    else:
        print_table(table)
        for kind, r in runs.items():
            for key, err in r.errors.items():
                print(f"{kind} {key}: {err}")
        print(f"results: {args.workdir / 'results.json'}")
    errors = any(r.errors for r in runs.values())
    missed = any(row["ok"] is False for row in table)
    if args.check and (missed or errors or "ophiura" not in runs):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
