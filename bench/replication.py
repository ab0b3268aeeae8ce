"""`python -m bench replication`: StarFish replicated volumes against the direct target (§6).

One run, one machine, everything on 127.0.0.1. Three `ophiura se` processes (local, near, far)
live through the whole run; an `ophiura he` is started per configuration with the links emulated
by the HE itself (`--se NAME=HOST:PORT,delay=MS,rate=MBIT`; `tc netem` is missing here). The
direct baseline is `ophiura target --nbd` on a local file of data. Every figure goes through the
same client path, `fio --ioengine=nbd` (one NBD connection per fio thread):

  read hit    8 KiB random reads, 1 thread, QD1, over a span the HE cache holds (warmed first)
  read miss   8 KiB random reads, 1 thread, QD1, over the whole volume, HE cache off (--cache 0),
              after the page cache of the direct file / the SEs' data files is dropped (disk)
  write       8 KiB random writes, 1 thread, QD1, over the whole volume
  *_8t        the same with 8 threads (paper: 8 threads), reported as MiB/s

for: direct (run first and last: its spread is the noise of the run), N=3 Q=1 and N=3 Q=2 with
the near SE at one-way 0/1/2/4/8 ms and the far SE at 8 ms ("dark fiber"), and an "Internet"
far SE at 65 ms and 51 Mbit/s (near 1 ms). Then PostMark on kernel ext4 (mounted `dirsync`) on
a loop device over `nbdfuse` (the export as a file), N=3 Q=2 near 1 ms vs the direct target
through the same stack, and recovery: the far SE killed
(-9) for T seconds under a single-thread 8 KiB write load, restarted, and timed until `up`
(replay, since the outage overflows a small HE queue), then wiped and restarted (full copy).

Ratios are replicated/direct as performance (for latencies: direct latency / replicated
latency), all from this run. `--quick` for a short pass, `--json`, `--markdown`, `--check`,
`--plots DIR` (PNG, needs matplotlib: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cluster import (
    Proc,
    SeLink,
    he_proc,
    he_status,
    se_proc,
    se_states,
    wait_all_up,
    write_secret,
)
from bench.servers import ServerError, ophiura_target_unavailable, start_ophiura
from bench.servers import wait_for_port as _wait_for_port
from bench.workloads import FioMeasurement, PostmarkResult, WorkloadError, fio_nbd, run_postmark
from ophiura.testkit.ports import HOST, free_port
from ophiura.testkit.waiting import wait_for

KIB, MIB = 1 << 10, 1 << 20
VOLUME = "vol"
HIT_SPAN = 32 * MIB  # read-hit span: well inside the HE cache (paper: 100 MB in a 128 MB cache)
HE_CACHE = "64M"
PAPER_WRITE_MS = {"RAID": 2.6, 1: 3.4, 2: 5.3, 4: 9.2, 8: 17.2}  # StarFish Table 5, Q=2
PAPER_REPLAY_FRACTION = 0.17
REC_QUEUE = "1M"  # HE write queue in the recovery run: any outage > ~1 s under load overflows it
TOOLS = ("fio",)
PM_TOOLS = ("nbdfuse", "postmark", "mkfs.ext4", "umount", "losetup", "mount")


@dataclass(frozen=True)
class Micro:
    key: str
    title: str
    rw: str
    jobs: int
    cached: bool  # needs the HE cache (read hit) or none (miss, writes)
    metric: str  # "latency_ms" (lower is better) or "mib_per_s"


MICROS = (
    Micro("read_hit", "8 KiB random read hit, 1 thread", "randread", 1, True, "latency_ms"),
    Micro("read_miss", "8 KiB random read miss, 1 thread", "randread", 1, False, "latency_ms"),
    Micro("write", "8 KiB random write, 1 thread", "randwrite", 1, False, "latency_ms"),
    Micro("read_hit_8t", "8 KiB random read hit, 8 threads", "randread", 8, True, "mib_per_s"),
    Micro("read_miss_8t", "8 KiB random read miss, 8 threads", "randread", 8, False, "mib_per_s"),
    Micro("write_8t", "8 KiB random write, 8 threads", "randwrite", 8, False, "mib_per_s"),
)
UNITS = {"latency_ms": "ms", "mib_per_s": "MiB/s"}
READS = ("read_hit", "read_miss", "read_hit_8t", "read_miss_8t")


@dataclass(frozen=True)
class Config:
    key: str
    quorum: int  # 0: direct
    near_ms: float = 0.0
    far_ms: float = 0.0
    far_mbit: float | None = None
    suffix: str = ""

    @property
    def title(self) -> str:
        if not self.quorum:
            return "direct (ophiura target)"
        far = f"{self.far_ms:g} ms" + (f" @ {self.far_mbit:g} Mbit/s" if self.far_mbit else "")
        return f"N=3 Q={self.quorum}, near {self.near_ms:g} ms, far {far}{self.suffix}"

    def links(self, ports: dict[str, int]) -> list[SeLink]:
        return [
            SeLink("local", ports["local"]),
            SeLink("near", ports["near"], self.near_ms),
            SeLink("far", ports["far"], self.far_ms, self.far_mbit),
        ]


def configs(delays: list[float], internet: bool, repeat: bool) -> list[Config]:
    """Q=1 then Q=2 over the near delays (far 8 ms), the Internet far SE, and (repeat) the
    recommended N=3 Q=2 near 1 ms once more at the end, to see the drift within the run."""
    out = []
    for q in (1, 2):
        for d in delays:
            out.append(Config(f"q{q}_near{d:g}", q, d, max(8.0, d)))
        if internet:
            out.append(Config(f"q{q}_inet", q, 1.0, 65.0, 51.0))
    if repeat and 1.0 in delays:
        out.append(Config("q2_near1_again", 2, 1.0, 8.0, suffix=" (again, at the end)"))
    return out


@dataclass
class ConfigRun:
    config: Config
    results: dict[str, FioMeasurement] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def value(self, key: str) -> float | None:
        m = self.results.get(key)
        if m is None:
            return None
        metric = next(w.metric for w in MICROS if w.key == key)
        return m.latency_ms if metric == "latency_ms" else m.mib_per_s

    def to_json(self) -> dict[str, object]:
        return {
            "config": self.config.__dict__,
            "title": self.config.title,
            "results": {k: m.to_json() for k, m in self.results.items()},
            "errors": self.errors,
            "notes": self.notes,
        }


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- the cluster


class Cluster:
    """Three SEs for the whole run; an HE per configuration."""

    def __init__(self, workdir: Path, size_mib: int) -> None:
        self.dir = workdir / "starfish"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.secret = write_secret(self.dir / "secret")
        self.size_mib = size_mib
        self.ses: dict[str, Proc] = {}
        self.he: Proc | None = None
        self.he_count = 0

    def start_ses(self) -> None:
        for name in ("local", "near", "far"):
            self.ses[name] = se_proc(name, self.dir / name, self.secret, self.dir).start()

    @property
    def ports(self) -> dict[str, int]:
        return {name: p.port for name, p in self.ses.items()}

    def start_he(self, cfg: Config, *, cache: str, queue: str = "64M") -> Proc:
        self.stop_he()
        self.he_count += 1
        he = he_proc(
            cfg.links(self.ports),
            quorum=cfg.quorum,
            volume=VOLUME,
            size_mib=self.size_mib,
            secret_file=self.secret,
            log_path=self.dir / f"he-{self.he_count}-{cfg.key}.log",
            state_dir=self.dir / f"he-state-{self.he_count}",
            cache=cache,
            queue=queue,
        )
        self.he = he.start()
        wait_all_up(self.control, self.secret, VOLUME, 3)
        return he

    @property
    def control(self) -> int:
        assert self.he is not None
        return self.he.control_port  # type: ignore[attr-defined,no-any-return]

    def data_files(self) -> list[Path]:
        """Each SE's data file of the benchmark volume."""
        return [self.dir / name / "volumes" / VOLUME / "data" for name in self.ses]

    def uri(self) -> str:
        assert self.he is not None
        return f"nbd://{HOST}:{self.he.port}/{VOLUME}"

    def status(self) -> dict[str, Any]:
        return he_status(self.control, self.secret)

    def stop_he(self) -> None:
        if self.he is not None:
            self.he.stop()
            self.he = None

    def stop(self) -> None:
        self.stop_he()
        for p in self.ses.values():
            p.stop()


@contextlib.contextmanager
def direct_target(workdir: Path, backing: Path, size: int):  # type: ignore[no-untyped-def]
    nbd = free_port()
    server = start_ophiura(
        backing,
        f"{size // MIB}M",
        workdir / "direct-target.log",
        state_dir=workdir / "direct-state",
        extra_args=["--nbd", f"{HOST}:{nbd}"],
    )
    try:
        _wait_for_port(nbd, 20, server.proc)
        yield f"nbd://{HOST}:{nbd}/disk"
    finally:
        server.stop()


# ------------------------------------------------------------------------------- micro


def run_micro(w: Micro, uri: str, size: int, seconds: float, out: Path) -> FioMeasurement:
    span = HIT_SPAN if w.cached else size
    return fio_nbd(w.key, uri, rw=w.rw, jobs=w.jobs, seconds=seconds, span=span, output=out)


def warm(uri: str, out: Path) -> None:
    """Read the read-hit span once, sequentially, so it is in the HE cache."""
    fio_nbd(
        "warm",
        uri,
        rw="read",
        jobs=1,
        seconds=30,
        span=HIT_SPAN,
        bs=MIB,
        output=out,
        extra=["--time_based=0", "--loops=1"],
    )


def drop_file_cache(paths: list[Path]) -> None:
    """Write back, then drop from the page cache, the files this run owns (never the machine's
    caches): a read miss then reads the disk, as the paper's did (2.5 GB working set, HE
    cache off), on the direct side and on the SEs alike. `--read-miss-cache keep` skips it."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _cold(w: Micro, args: argparse.Namespace, paths: list[Path]) -> None:
    if w.rw == "randread" and not w.cached and args.read_miss_cache == "drop":
        drop_file_cache(paths)


def micro_direct(uri: str, args: argparse.Namespace, label: str, backing: Path) -> ConfigRun:
    run = ConfigRun(Config("direct", 0))
    say(f"== direct ({label})")
    for w in MICROS:
        if args.only and w.key not in args.only:
            continue
        _micro_into(run, w, uri, args, [backing], "direct")
    return run


def _micro_into(
    run: ConfigRun, w: Micro, uri: str, args: argparse.Namespace, files: list[Path], tag: str
) -> None:
    """Warm or drop the caches `w` needs, run it, record and report the result or its error."""
    try:
        if w.key == "read_hit":
            warm(uri, args.workdir / "fio-warm.json")
        _cold(w, args, files)
        m = run_micro(w, uri, args.size, args.seconds, args.workdir / f"fio-{tag}-{w.key}.json")
    except WorkloadError as exc:
        run.errors[w.key] = str(exc)
        say(f"   {w.title}: ERROR {exc}")
        return
    run.results[w.key] = m
    say(
        f"   {w.title}: {m.latency_ms:.3f} ms mean, p50 {m.lat_p50_us / 1000:.3f} ms, "
        f"{m.mib_per_s:,.1f} MiB/s ({m.iops:,.0f} IOPS)"
    )


def micro_replicated(cluster: Cluster, cfg: Config, args: argparse.Namespace) -> ConfigRun:
    run = ConfigRun(cfg)
    say(f"== {cfg.title}")
    for cached in (False, True):
        todo = [w for w in MICROS if w.cached == cached and (not args.only or w.key in args.only)]
        if not todo:
            continue
        try:
            cluster.start_he(cfg, cache=HE_CACHE if cached else "0")
        except ServerError as exc:
            for w in todo:
                run.errors[w.key] = f"HE did not start: {exc}"
            say(f"   HE did not start: {exc}")
            continue
        uri = cluster.uri()
        for w in todo:
            _micro_into(run, w, uri, args, cluster.data_files(), cfg.key)
        with contextlib.suppress(Exception):
            st = cluster.status()
            vol = next(v for v in st["volumes"] if v["name"] == VOLUME)
            states = se_states(st, VOLUME)
            if any(s != "up" for s in states.values()):
                run.notes.append(f"after the {'cached' if cached else 'uncached'} runs: {states}")
            fails = {s["name"]: s["failures"] for s in vol["ses"] if s["failures"]}
            if fails:
                run.notes.append(f"SE failures during the runs: {fails}")
            if cached:
                run.notes.append(f"HE cache hit ratio {vol['cache']['hit_ratio']:.3f}")
        cluster.stop_he()
    return run


def fill_volume(cluster: Cluster, args: argparse.Namespace) -> None:
    """Write the whole volume once (1 MiB sequential) so reads hit data, as the direct file does."""
    cluster.start_he(Config("fill", 1, 0.0, 0.0), cache="0")
    say(f"filling the replicated volume ({args.size // MIB} MiB)")
    fio_nbd(
        "fill",
        cluster.uri(),
        rw="write",
        jobs=1,
        seconds=600,
        span=args.size,
        bs=MIB,
        depth=4,
        output=args.workdir / "fio-fill.json",
        extra=["--time_based=0", "--loops=1", "--buffer_compress_percentage=0"],
    )
    cluster.stop_he()


# ------------------------------------------------------------------------------- HE CPU


CPU_LOADS = (("write", "randwrite"), ("read", "randread"))
CPU_BS = 4 * KIB
CPU_DEPTH = 16


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _pyspy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the HE (raw collapsed stacks, with native-less idle frames dropped);
    None when py-spy is not installed (`pip install py-spy`)."""
    exe = _pyspy()
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
    cmd += ["--rate", "250", "--nonblocking"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def stop_profile(prof: subprocess.Popen[bytes], out: Path, top: int = 15) -> dict[str, Any]:
    """Stop py-spy (SIGINT: it writes its file) and summarise: the functions with the most
    samples on top of the stack (self) and anywhere in it (total), as shares of all samples."""
    prof.send_signal(signal.SIGINT)
    try:
        prof.wait(30)
    except subprocess.TimeoutExpired:
        prof.kill()
        prof.wait()
    if not out.exists():
        return {"error": f"py-spy wrote no {out.name}"}
    self_n: dict[str, int] = {}
    total_n: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        samples += n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            total_n[f] = total_n.get(f, 0) + n

    def ranked(d: dict[str, int]) -> list[list[Any]]:
        best = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [[f, round(n / max(samples, 1), 4)] for f, n in best]

    return {"file": str(out), "samples": samples, "self": ranked(self_n),
            "total": ranked(total_n)}  # fmt: skip


def _frame(raw: str) -> str:
    """`func (/long/path/to/pkg/mod.py:123)` -> `func (pkg/mod.py)`: one entry per function."""
    name, _, loc = raw.partition(" (")
    path = loc.rstrip(")").rsplit(":", 1)[0]
    for cut in ("/src/", "/site-packages/", "/lib/"):
        if cut in path:
            path = path.split(cut, 1)[1]
            break
    return f"{name} ({path})" if path else name


def bench_he_cpu(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """HE CPU per operation: the HE process's user+sys CPU time over a fixed count of 4 KiB
    QD16 random writes, then reads (HE cache off, so every read goes to an SE), N=3 Q=2 with
    all SEs on this machine, through fio's nbd engine (one connection). The SEs' CPU per
    operation is reported too. `--profile` samples the HE with py-spy meanwhile."""
    cfg = Config("cpu", 2, 0.0, 0.0, suffix=" (all SEs on this machine)")
    out: dict[str, Any] = {
        "config": cfg.title,
        "ios": args.cpu_ios,
        "bs": CPU_BS,
        "iodepth": CPU_DEPTH,
        "loadavg_before": _loadavg(),
        "loads": {},
    }
    he = cluster.start_he(cfg, cache="0")
    say(f"== HE CPU per op: {cfg.title}, 4 KiB QD{CPU_DEPTH}, {args.cpu_ios} ops each")
    try:
        for key, rw in CPU_LOADS:
            before_reads = _reads_by_se(cluster)
            spy = args.workdir / f"pyspy-he-{key}.txt"
            prof = start_profile(he.pid, spy) if args.profile else None
            se_pids = {name: p.pid for name, p in cluster.ses.items()}
            se0 = {name: proc_cpu_s(pid) for name, pid in se_pids.items()}
            he0, t0, load0 = proc_cpu_s(he.pid), time.monotonic(), _loadavg()
            m = fio_nbd(
                f"cpu-{key}",
                cluster.uri(),
                rw=rw,
                jobs=1,
                seconds=600,
                span=args.size,
                bs=CPU_BS,
                depth=CPU_DEPTH,
                output=args.workdir / f"fio-cpu-{key}.json",
                extra=["--time_based=0", "--ramp_time=0", f"--number_ios={args.cpu_ios}"],
            )
            wall = time.monotonic() - t0
            he_cpu = proc_cpu_s(he.pid) - he0
            se_cpu = {name: proc_cpu_s(pid) - se0[name] for name, pid in se_pids.items()}
            ios = m.ops or args.cpu_ios
            row: dict[str, Any] = {
                "ios": ios,
                "iops": round(m.iops, 1),
                "lat_mean_ms": round(m.latency_ms, 3),
                "wall_s": round(wall, 2),
                "he_cpu_s": round(he_cpu, 3),
                "he_ms_per_op": round(he_cpu / ios * 1e3, 4),
                "he_cpu_util": round(he_cpu / wall, 3) if wall else None,
                "se_ms_per_op": {n: round(c / ios * 1e3, 4) for n, c in se_cpu.items()},
                "loadavg": load0,
            }
            after_reads = _reads_by_se(cluster)
            if after_reads is not None and before_reads is not None:
                row["reads_by_se"] = {n: v - before_reads.get(n, 0) for n, v in after_reads.items()}
            if prof is not None:
                row["profile"] = stop_profile(prof, spy)
            elif args.profile:
                row["profile"] = {"error": "py-spy not installed (pip install py-spy)"}
            out["loads"][key] = row
            say(
                f"   {key}: {row['he_ms_per_op']:.3f} ms HE CPU per op "
                f"({row['he_cpu_util']:.0%} of a core), {m.iops:,.0f} IOPS, load {load0}"
            )
    except WorkloadError as exc:
        out["error"] = str(exc)
        say(f"   ERROR {exc}")
    finally:
        cluster.stop_he()
    return out


def _reads_by_se(cluster: Cluster) -> dict[str, int] | None:
    """Reads each SE served (HE status, `reads`), None when this HE does not report them."""
    with contextlib.suppress(Exception):
        vol = next(v for v in cluster.status()["volumes"] if v["name"] == VOLUME)
        if all("reads" in s for s in vol["ses"]):
            return {s["name"]: int(s["reads"]) for s in vol["ses"]}
    return None


def markdown_cpu(cpu: dict[str, Any]) -> str:
    if "loads" not in cpu or not cpu["loads"]:
        return f"HE CPU per op: {cpu.get('error') or cpu.get('skipped', 'not run')}"
    head = "| load | HE CPU ms/op | HE CPU, share of a core | SEs' CPU ms/op | IOPS | reads by SE "
    lines = [
        f"HE CPU per op, {cpu['config']}, 4 KiB QD{cpu['iodepth']}, {cpu['ios']} ops, HE cache off",
        "",
        head + "| load avg |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for key, r in cpu["loads"].items():
        ses = ", ".join(f"{n} {v:.3f}" for n, v in r["se_ms_per_op"].items())
        by_se = ", ".join(f"{n} {v}" for n, v in (r.get("reads_by_se") or {}).items()) or "-"
        lines.append(
            f"| {key} | {r['he_ms_per_op']:.3f} | {r['he_cpu_util']:.0%} | {ses} | "
            f"{r['iops']:,.0f} | {by_se if key == 'read' else '-'} | {r['loadavg']} |"
        )
    for key, r in cpu["loads"].items():
        prof = r.get("profile")
        if prof and "self" in prof:
            lines.append(f"\nHE profile, {key} ({prof['samples']} samples), top by self time:")
            lines += [f"  {share:6.1%}  {f}" for f, share in prof["self"][:10]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- PostMark


def postmark_unavailable() -> str | None:
    missing = [t for t in PM_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install postmark libnbd-bin e2fsprogs mount)"
    if os.geteuid() != 0:
        return "FUSE mounts need root here"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    return None


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> None:
    wait_for(cond, timeout, what, step=0.05, ignore=(), error=WorkloadError)


def _umount(path: Path, tries: int = 50) -> None:
    """Unmount; retried while busy (a detached loop device lets go of its file a little
    later), then lazily, so a stale mount never outlives the run."""
    for _ in range(tries):
        if not os.path.ismount(path):
            return
        res = subprocess.run(["umount", str(path)], capture_output=True, timeout=60, check=False)
        if res.returncode == 0:
            return
        time.sleep(0.1)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60, check=False)


def postmark_through_fuse(
    uri: str, base: Path, args: argparse.Namespace, transactions: int
) -> PostmarkResult:
    """nbdfuse (the export as a file) -> a filesystem on it -> PostMark.

    `--pm-stack ext4` (default): the file is attached to a loop device and the kernel's own
    ext4 is mounted on it (`--pm-mount`, default `dirsync`), so the kernel's page cache sits in
    front of the NBD export as the OS buffer cache sat in front of StarFish's HE, and
    directory updates are synchronous as in the paper's FFS without soft updates.
    `--pm-stack fuse2fs`: the earlier stack (fuse2fs on the file: every metadata block is a
    synchronous NBD write). Direct and replicated always go through the same stack.
    """
    nbd_dir, fs_dir = base / "nbd", base / "fs"
    for stale in (fs_dir, nbd_dir):  # left mounted by an interrupted run
        _umount(stale, tries=1)
    if base.exists():
        shutil.rmtree(base)
    nbd_dir.mkdir(parents=True)
    fs_dir.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    loop_dev: str | None = None
    try:
        with open(base / "nbdfuse.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    ["nbdfuse", str(nbd_dir), uri], stdout=log, stderr=subprocess.STDOUT
                )
            )
        _wait(lambda: os.path.ismount(nbd_dir), 20, "nbdfuse did not mount")
        image = nbd_dir / "nbd"
        res = subprocess.run(
            [
                "mkfs.ext4",
                "-F",
                "-q",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                str(image),
                f"{args.pm_fs_mib}M",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if res.returncode:
            raise WorkloadError(f"mkfs.ext4 exited {res.returncode}: {res.stderr[-500:]}")
        if args.pm_stack == "ext4":
            res = subprocess.run(
                ["losetup", "-f", "--show", str(image)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if res.returncode:
                raise WorkloadError(f"losetup exited {res.returncode}: {res.stderr[-500:]}")
            loop_dev = res.stdout.strip()
            opts = args.pm_mount or "defaults"
            res = subprocess.run(
                ["mount", "-t", "ext4", "-o", opts, loop_dev, str(fs_dir)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if res.returncode:
                raise WorkloadError(f"mount exited {res.returncode}: {res.stderr[-500:]}")
        else:
            with open(base / "fuse2fs.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        ["fuse2fs", "-f", str(image), str(fs_dir), "-o", "rw"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            _wait(lambda: os.path.ismount(fs_dir), 20, "fuse2fs did not mount")
        result = run_postmark(
            fs_dir, files=args.pm_files, transactions=transactions, timeout=args.pm_timeout
        )
        # the dirty data left in the page cache reaches the export at unmount: timed apart
        start = time.monotonic()
        _umount(fs_dir)
        result.unmount_seconds = time.monotonic() - start
        return result
    finally:
        _umount(fs_dir)
        if loop_dev:
            subprocess.run(
                ["losetup", "-d", loop_dev], capture_output=True, timeout=60, check=False
            )
        for proc in procs[1:]:
            _wait_or_kill(proc)
        _umount(nbd_dir)
        for proc in procs[:1]:
            _wait_or_kill(proc)


def _wait_or_kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def bench_postmark(cluster: Cluster, backing: Path, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "config": Config("pm", 2, 1.0, 8.0).title,
        "files": args.pm_files,
        "transactions": {"direct": args.pm_transactions, "replicated": args.pm_transactions_repl},
        "fs_mib": args.pm_fs_mib,
        "runs": [],
    }
    why = postmark_unavailable()
    if why:
        say(f"== PostMark skipped: {why}")
        out["skipped"] = why
        return out
    # direct, replicated, direct, replicated...: drift in the machine's load hits both
    for i in range(args.pm_repeat):
        row: dict[str, Any] = {}
        for kind in ("direct", "replicated"):
            say(f"== PostMark {kind} (round {i + 1})")
            try:
                if kind == "direct":
                    with direct_target(args.workdir, backing, args.size) as uri:
                        r = postmark_through_fuse(
                            uri, args.workdir / "pm", args, args.pm_transactions
                        )
                else:
                    cluster.start_he(Config("pm", 2, 1.0, 8.0), cache="128M")
                    try:
                        r = postmark_through_fuse(
                            cluster.uri(), args.workdir / "pm", args, args.pm_transactions_repl
                        )
                    finally:
                        cluster.stop_he()
            except (WorkloadError, ServerError) as exc:
                row[kind] = {"error": str(exc)}
                say(f"   ERROR {exc}")
                continue
            row[kind] = r.to_json()
            say(
                f"   {r.tps:,.1f} tps ({r.transactions} transactions in {r.tx_seconds} s, "
                f"{r.errors} PostMark errors)"
            )
        out["runs"].append(row)
    tps = {
        k: [r[k]["tps"] for r in out["runs"] if "tps" in r.get(k, {})]
        for k in ("direct", "replicated")
    }
    if tps["direct"] and tps["replicated"]:
        d = sum(tps["direct"]) / len(tps["direct"])
        r = sum(tps["replicated"]) / len(tps["replicated"])
        out.update(direct_tps=d, replicated_tps=r, ratio=r / d)
    return out


# ------------------------------------------------------------------------------- recovery


class Poller(threading.Thread):
    """Samples the HE status every `period` s: (time, far SE state, its lag in writes)."""

    def __init__(self, cluster: Cluster, se: str, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.cluster, self.se, self.period = cluster, se, period
        self.samples: list[tuple[float, str, int, int, list[int]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(Exception):
                st = self.cluster.status()
                vol = next(v for v in st["volumes"] if v["name"] == VOLUME)
                s = next(x for x in vol["ses"] if x["name"] == self.se)
                self.samples.append(
                    (
                        time.monotonic(),
                        s["state"],
                        vol["latest_seq"],
                        s["acked_seq"],
                        list(s["progress"]),
                    )
                )
            self.halt.wait(self.period)


def _phase(
    samples: list[tuple[float, str, int, int, list[int]]], after: float, prefix: str
) -> tuple[float | None, float | None, int]:
    """First and last sample time in a state starting with `prefix` after `after`; max bytes."""
    first = last = None
    total = 0
    for t, state, _latest, _acked, prog in samples:
        if t >= after and state.startswith(prefix):
            first = t if first is None else first
            last = t
            total = max(total, prog[1] if len(prog) > 1 else 0)
    return first, last, total


def _up_after(samples: list[tuple[float, str, int, int, list[int]]], after: float) -> float | None:
    return next((t for t, state, *_ in samples if t >= after and state == "up"), None)


def bench_recovery(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """Kill -9 the far SE for T s under a 1-thread 8 KiB write load, restart it (replay), then
    wipe and restart it (full copy); time each until `up`."""
    cfg = Config("rec", 2, 1.0, 8.0)
    out: dict[str, Any] = {
        "config": cfg.title,
        "outage_s": args.outage,
        "he_queue": REC_QUEUE,
        "load": "fio randwrite 8 KiB, 1 thread, QD1",
        "se": "far",
    }
    say(f"== recovery ({cfg.title}, far SE down {args.outage:g} s under load)")
    cluster.start_he(cfg, cache="64M", queue=REC_QUEUE)
    t_zero = time.monotonic()
    poller = Poller(cluster, "far")
    poller.start()
    load_s = args.outage * 2 + args.full_timeout + 60
    load_out = args.workdir / "fio-recovery-load.json"
    load_cmd = [
        "fio",
        "--name",
        "load",
        "--ioengine=nbd",
        f"--uri={cluster.uri()}",
        "--rw=randwrite",
        "--bs=8k",
        "--iodepth=1",
        "--numjobs=1",
        "--thread",
        "--time_based",
        f"--runtime={load_s:g}",
        f"--size={args.size}",
        "--randrepeat=0",
        "--norandommap",
        "--output-format=json",
        f"--output={load_out}",
    ]
    loader = subprocess.Popen(
        load_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    far = cluster.ses["far"]
    try:
        time.sleep(2)
        # ---- replay: down for `outage` seconds while the writes continue
        far.kill9()
        t_kill = time.monotonic()
        time.sleep(args.outage)
        t_restart = time.monotonic()
        far.start()
        t_listen = time.monotonic()
        _wait(
            lambda: _up_after(poller.samples, t_restart) is not None,
            args.outage * 4 + 60,
            "far SE not up again (replay)",
        )
        t_up = _up_after(poller.samples, t_restart)
        assert t_up is not None
        first, last, nbytes = _phase(poller.samples, t_restart, "recovering")
        kinds = sorted({s for t, s, *_ in poller.samples if t_restart <= t <= t_up})
        kill_sample = next((x for x in poller.samples if x[0] >= t_kill), None)
        restart_sample = next((x for x in poller.samples if x[0] >= t_restart), None)
        missed = (restart_sample[2] - kill_sample[3]) if kill_sample and restart_sample else None
        outage = t_restart - t_kill
        replay = {
            "outage_s": outage,
            "se_start_s": t_listen - t_restart,  # `ophiura se` until it accepts connections
            "recovery_s": t_up - t_listen,  # SE accepting -> `up` (reconnect, replay, catch up)
            "restart_to_up_s": t_up - t_restart,
            "fraction": (t_up - t_listen) / outage,
            "fraction_with_start": (t_up - t_restart) / outage,
            "states_seen": kinds,
            "missed_writes": missed,
            "recovering_s": (last - first) if first and last else None,
            "progress_bytes": nbytes,
        }
        rec_s = replay["recovering_s"] or replay["recovery_s"]
        moved = nbytes or (missed or 0) * 8 * KIB
        replay["rate_mib_s"] = moved / MIB / rec_s if rec_s else None
        out["replay"] = replay
        say(
            f"   replay: outage {outage:.1f} s; SE listening {replay['se_start_s']:.2f} s after "
            f"restart, up {replay['recovery_s']:.2f} s later ({replay['fraction']:.1%} of the "
            f"outage; {replay['fraction_with_start']:.1%} from restart), states {kinds}, "
            f"{moved / MIB:.1f} MiB"
        )
        # ---- full: wipe the far SE's data and restart it
        time.sleep(1)
        far.kill9()
        shutil.rmtree(cluster.dir / "far")
        (cluster.dir / "far").mkdir()
        t_restart = time.monotonic()
        far.start()
        t_listen = time.monotonic()
        _wait(
            lambda: _up_after(poller.samples, t_restart) is not None,
            args.full_timeout,
            "far SE not up again (full)",
        )
        t_up = _up_after(poller.samples, t_restart)
        assert t_up is not None
        first, last, nbytes = _phase(poller.samples, t_restart, "recovering")
        kinds = sorted({s for t, s, *_ in poller.samples if t_restart <= t <= t_up})
        rec_s = (last - first) if first and last else t_up - t_restart
        full = {
            "se_start_s": t_listen - t_restart,
            "recovery_s": t_up - t_listen,
            "restart_to_up_s": t_up - t_restart,
            "recovering_s": rec_s,
            "states_seen": kinds,
            "progress_bytes": nbytes,
            "volume_bytes": args.size,
            "rate_mib_s": (nbytes or args.size) / MIB / rec_s if rec_s else None,
        }
        out["full"] = full
        say(
            f"   full: up {full['recovery_s']:.2f} s after the SE listened, "
            f"{full['rate_mib_s']:.1f} MiB/s,"
            f" states {kinds}"
        )
    except (WorkloadError, ServerError, OSError) as exc:
        out["error"] = str(exc)
        say(f"   ERROR {exc}")
    finally:
        if not far.alive():
            with contextlib.suppress(ServerError):
                far.start()
        poller.halt.set()
        poller.join(5)
        if loader.poll() is None:
            loader.send_signal(signal.SIGINT)  # fio stops and writes its results
        try:
            loader.wait(30)
        except subprocess.TimeoutExpired:
            loader.kill()
            loader.wait(10)
        cluster.stop_he()
    out["timeline"] = [
        (round(t - t_zero, 3), s, latest - acked) for t, s, latest, acked, _ in poller.samples
    ]
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        text = load_out.read_text()
        job = json.loads(text[text.index("{") :])["jobs"][0]["write"]
        out["load_iops"] = job["iops"]
        out["load_lat_ms"] = job["clat_ns"]["mean"] / 1e6
    return out


# ------------------------------------------------------------------------------- report


def perf_ratio(key: str, value: float | None, base: float | None) -> float | None:
    """Replicated performance / direct performance (latencies inverted: higher is better)."""
    if value is None or base is None or value == 0 or base == 0:
        return None
    metric = next(w.metric for w in MICROS if w.key == key)
    return base / value if metric == "latency_ms" else value / base


def direct_baseline(directs: list[ConfigRun]) -> dict[str, float]:
    base: dict[str, float] = {}
    for w in MICROS:
        vals = [v for r in directs if (v := r.value(w.key)) is not None]
        if vals:
            base[w.key] = sum(vals) / len(vals)
    return base


def spread(directs: list[ConfigRun]) -> dict[str, float]:
    """(max - min) / mean of the direct runs, per workload: the noise of this run."""
    out = {}
    for w in MICROS:
        vals = [v for r in directs if (v := r.value(w.key)) is not None]
        if len(vals) > 1:
            out[w.key] = (max(vals) - min(vals)) / (sum(vals) / len(vals))
    return out


def results_rows(runs: list[ConfigRun], base: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "key": run.config.key,
            "title": run.config.title,
            "quorum": run.config.quorum,
            "near_ms": run.config.near_ms,
        }
        for w in MICROS:
            v = run.value(w.key)
            row[w.key] = v
            row[f"{w.key}_ratio"] = (
                None if not run.config.quorum else perf_ratio(w.key, v, base.get(w.key))
            )
        rows.append(row)
    return rows


def targets(
    runs: list[ConfigRun], base: dict[str, float], pm: dict[str, Any], rec: dict[str, Any]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    repl = [r for r in runs if r.config.quorum]
    for key in READS:
        title = next(w.title for w in MICROS if w.key == key)
        ratios = [(r.config.title, perf_ratio(key, r.value(key), base.get(key))) for r in repl]
        ratios = [(t, x) for t, x in ratios if x is not None]
        if not ratios:
            continue
        worst = min(ratios, key=lambda tr: tr[1])
        out.append(
            {
                "target": f"{title}: replicated >= 0.9x direct (worst configuration)",
                "measured": f"{worst[1]:.2f}x ({worst[0]}); best {max(x for _, x in ratios):.2f}x",
                "ok": worst[1] >= 0.9,
            }
        )
    d_write = base.get("write")
    for r in repl:
        w = r.value("write")
        if r.config.quorum != 2 or w is None or d_write is None:
            continue
        limit = d_write + 2 * r.config.near_ms + 1.0
        out.append(
            {
                "target": f"write latency, {r.config.title}: <= direct + 2 x "
                f"{r.config.near_ms:g} + 1 = {limit:.2f} ms",
                "measured": f"{w:.2f} ms (direct {d_write:.3f} ms)",
                "ok": w <= limit,
            }
        )
    if "ratio" in pm:
        out.append(
            {
                "target": "PostMark, N=3 Q=2 near 1 ms: >= 0.85x direct",
                "measured": f"{pm['ratio']:.2f}x ({pm['replicated_tps']:.1f} vs "
                f"{pm['direct_tps']:.1f} tps)",
                "ok": pm["ratio"] >= 0.85,
            }
        )
    else:
        out.append(
            {
                "target": "PostMark, N=3 Q=2 near 1 ms: >= 0.85x direct",
                "measured": f"not run: {pm.get('skipped') or 'error'}",
                "ok": None,
            }
        )
    rp = rec.get("replay")
    if rp:
        out.append(
            {
                "target": f"replay recovery <= {PAPER_REPLAY_FRACTION:.0%} of the outage",
                "measured": f"{rp['fraction']:.1%} (up {rp['recovery_s']:.2f} s after the SE "
                f"listened again, outage {rp['outage_s']:.1f} s); counting the SE's own start "
                f"({rp['se_start_s']:.2f} s): {rp['fraction_with_start']:.1%}",
                "ok": rp["fraction"] <= PAPER_REPLAY_FRACTION,
            }
        )
    else:
        out.append(
            {
                "target": f"replay recovery <= {PAPER_REPLAY_FRACTION:.0%} of the outage",
                "measured": f"not measured: {rec.get('error') or rec.get('skipped')}",
                "ok": None,
            }
        )
    return out


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown_results(rows: list[dict[str, Any]]) -> str:
    head = ["configuration"] + [f"{w.key} ({UNITS[w.metric]})" for w in MICROS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(MICROS)]
    for row in rows:
        cells = [row["title"]]
        for w in MICROS:
            v, r = row[w.key], row[f"{w.key}_ratio"]
            d = 3 if w.metric == "latency_ms" else 1
            cells.append(_f(v, d) + (f" ({r:.2f}x)" if r is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_targets(tg: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {_f(t['ok'])} |" for t in tg]
    return "\n".join(lines)


def markdown_recovery(rec: dict[str, Any]) -> str:
    lines = [
        "| recovery | outage (s) | SE start (s) | SE listening -> up (s) | in recovering state (s) "
        "| moved (MiB) | rate (MiB/s) | states seen |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind in ("replay", "full"):
        r = rec.get(kind)
        if not r:
            continue
        moved = (
            r.get("progress_bytes")
            or r.get("volume_bytes")
            or (r.get("missed_writes") or 0) * 8 * KIB
        ) / MIB
        lines.append(
            f"| {kind} | {_f(r.get('outage_s'), 1)} | {_f(r.get('se_start_s'))} | "
            f"{_f(r['recovery_s'])} | "
            f"{_f(r.get('recovering_s'))} | {moved:,.1f} | {_f(r.get('rate_mib_s'), 1)}"
            f" | {', '.join(r['states_seen'])} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- plots


def plots(report: dict[str, Any], outdir: Path) -> list[Path]:
    """PNG figures next to StarFish's Table 5/6 and §6.4; [] when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("plots skipped: matplotlib not installed (pip install -e '.[bench]')")
        return []
    outdir.mkdir(parents=True, exist_ok=True)
    made = []
    rows = report["rows"]
    base = report["direct_baseline"]
    dark = [r for r in rows if r["quorum"] and r["key"].startswith("q") and "_near" in r["key"]]
    dark = [r for r in dark if not r["key"].endswith(("inet", "again"))]
    p50 = {c["config"]["key"]: {k: m["lat_p50_us"] / 1000 for k, m in c["results"].items()}
           for c in report.get("configs", [])}  # fmt: skip

    # 1. latency vs near delay
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for q, style, color in ((1, "o", "C0"), (2, "s", "C1")):
        pts = sorted((r["near_ms"], r["write"]) for r in dark if r["quorum"] == q and r["write"])
        if pts:
            ax.plot(*zip(*pts, strict=True), style + "-", color=color,
                    label=f"N=3 Q={q}, mean (measured)")  # fmt: skip
        pts = sorted((r["near_ms"], p50[r["key"]]["write"]) for r in dark
                     if r["quorum"] == q and "write" in p50.get(r["key"], {}))  # fmt: skip
        if pts:
            ax.plot(*zip(*pts, strict=True), style + "--", color=color, mfc="none",
                    label=f"N=3 Q={q}, median (measured)")  # fmt: skip
    delays = sorted({r["near_ms"] for r in dark})
    if "write" in base and delays:
        ax.axhline(base["write"], color="k", lw=1, label="direct (measured)")
        ax.plot(
            delays,
            [base["write"] + 2 * d + 1 for d in delays],
            "k:",
            label="target: direct + 2d + 1 ms",
        )
    pd = [1, 2, 4, 8]
    ax.plot(pd, [PAPER_WRITE_MS[d] for d in pd], "x--", color="grey", label="StarFish Table 5, Q=2")
    ax.plot(pd, [2.6] * 4, "+--", color="silver", label="StarFish Table 5, Q=1 and RAID")
    ax.set_xlabel("near SE one-way delay (ms)")
    ax.set_ylabel("8 KiB random write latency, 1 thread (ms)")
    ax.set_title("Write latency vs near delay (far SE 8 ms)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    miss = "read miss" if report.get("read_miss_cache") == "keep" else "read miss (disk)"
    for key, label in (("read_miss", miss), ("read_hit", "read hit")):
        for q, style in ((1, "o-"), (2, "s-")):
            pts = sorted((r["near_ms"], r[key]) for r in dark if r["quorum"] == q and r[key])
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{label}, Q={q}")
        if key in base:
            ax.axhline(
                base[key],
                ls="--",
                lw=1,
                color="k" if key == "read_miss" else "grey",
                label=f"{label}, direct",
            )
    ax.set_xlabel("near SE one-way delay (ms)")
    ax.set_ylabel("8 KiB random read latency, 1 thread (ms)")
    ax.set_title("Read latency (local SE at 0 ms)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    made.append(outdir / "replication-latency.png")
    fig.savefig(made[-1], dpi=110)
    plt.close(fig)

    # 2. throughput, 8 threads
    miss = "read miss" if report.get("read_miss_cache") == "keep" else "read miss (disk)"
    keys = [("read_hit_8t", "read hit"), ("read_miss_8t", miss), ("write_8t", "write")]
    sel = [("direct", base)]
    for r in rows:
        if r["quorum"] and (r["near_ms"] in (0.0, 1.0, 8.0) or r["key"].endswith("inet")):
            sel.append((r["title"].replace("N=3 ", "").replace(", far", "\nfar"), r))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(sel)
    for i, (label, src) in enumerate(sel):
        vals = [src.get(k) or 0 for k, _ in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], [t for _, t in keys])
    ax.set_ylabel("MiB/s (8 KiB random, 8 threads)")
    ax.set_title("Throughput, 8 threads (StarFish Table 6: within 7% of direct RAID)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    made.append(outdir / "replication-throughput.png")
    fig.savefig(made[-1], dpi=110)
    plt.close(fig)

    # 3. recovery timeline
    rec = report.get("recovery", {})
    tl = rec.get("timeline") or []
    if tl:
        fig, ax = plt.subplots(figsize=(11, 4))
        ts = [t for t, _, _ in tl]
        ax.plot(
            ts,
            [lag for _, _, lag in tl],
            "-",
            lw=1,
            color="C0",
            label="far SE: writes behind the newest",
        )
        colors = {
            "up": None,
            "failed": "C3",
            "connecting": "C3",
            "recovering-replay": "C2",
            "recovering-full": "C1",
            "recovering-quick": "C4",
        }
        prev = None
        for t, state, _ in tl:
            if state != prev and colors.get(state):
                ax.axvline(t, color=colors[state], lw=0.8, ls="--")
                ax.text(
                    t,
                    ax.get_ylim()[1] * 0.9,
                    state,
                    rotation=90,
                    fontsize=7,
                    color=colors[state],
                    va="top",
                )
            prev = state
        rp, fu = rec.get("replay") or {}, rec.get("full") or {}
        text = []
        if rp:
            text.append(
                f"replay: up {rp['recovery_s']:.2f} s after the SE listened, outage "
                f"{rp['outage_s']:.1f} s = {rp['fraction']:.1%} (StarFish ~17%); SE start "
                f"{rp['se_start_s']:.1f} s; {_f(rp.get('rate_mib_s'), 1)} MiB/s"
            )
        if fu:
            text.append(f"full: {fu['recovery_s']:.2f} s, {_f(fu.get('rate_mib_s'), 1)} MiB/s")
        ax.set_title("; ".join(text) or "recovery", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("writes behind")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        made.append(outdir / "replication-recovery.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench replication", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="256 MiB volume, 2 s per workload, delays 0,1,4, short PostMark/outage",
    )
    p.add_argument("--size", type=int, default=None, help="volume MiB (default 1024)")
    p.add_argument("--seconds", type=float, default=None, help="per workload (default 5)")
    p.add_argument("--delays", default=None, help="near one-way delays, ms (default 0,1,2,4,8)")
    p.add_argument(
        "--no-internet",
        dest="internet",
        action="store_false",
        help="skip the 65 ms / 51 Mbit/s far-SE configurations",
    )
    p.add_argument("--only", default="", help="comma-separated micro-benchmark keys")
    p.add_argument("--no-micro", dest="micro", action="store_false")
    p.add_argument("--no-postmark", dest="postmark", action="store_false")
    p.add_argument("--no-recovery", dest="recovery", action="store_false")
    p.add_argument(
        "--no-cpu",
        dest="cpu",
        action="store_false",
        help="skip the HE CPU-per-operation figure (4 KiB QD16 writes and reads, N=3 Q=2)",
    )
    p.add_argument(
        "--cpu-ios", type=int, default=None, help="ops per load for the CPU figure (default 50000)"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the HE with py-spy during the CPU figure (pyspy-he-*.txt in the workdir)",
    )
    p.add_argument("--pm-files", type=int, default=None)
    p.add_argument("--pm-transactions", type=int, default=None, help="direct (default 10000)")
    p.add_argument(
        "--pm-transactions-repl",
        type=int,
        default=None,
        help="replicated (default 1000: each directory update is a synchronous journal commit, "
        "so both phases last >= 10 s of PostMark's whole seconds)",
    )
    p.add_argument("--pm-repeat", type=int, default=None, help="PostMark rounds (default 2)")
    p.add_argument(
        "--pm-stack",
        choices=("ext4", "fuse2fs"),
        default="ext4",
        help="filesystem on the nbdfuse file: kernel ext4 on a loop device (default) or fuse2fs",
    )
    p.add_argument("--pm-mount", default="dirsync", help="ext4 mount options (default dirsync)")
    p.add_argument(
        "--read-miss-cache",
        choices=("drop", "keep"),
        default="drop",
        help="before each read-miss run, drop the page cache of the direct file and of the "
        "SEs' data files (default), or keep it (reads then come from memory)",
    )
    p.add_argument("--outage", type=float, default=None, help="SE outage, s (default 20)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ophiura-bench"))
    p.add_argument("--plots", type=Path, default=None, help="write PNGs here (e.g. docs/img)")
    p.add_argument(
        "--replot", type=Path, default=None, help="only redraw the plots from a results JSON"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    a = p.parse_args(argv)
    q = a.quick
    a.size = (a.size or (256 if q else 1024)) * MIB
    a.seconds = a.seconds or (2.0 if q else 5.0)
    a.delays = [float(x) for x in (a.delays or ("0,1,4" if q else "0,1,2,4,8")).split(",") if x]
    a.only = {k for k in a.only.split(",") if k}
    a.pm_files = a.pm_files or (200 if q else 500)
    a.pm_transactions = a.pm_transactions or (2000 if q else 10000)
    a.pm_transactions_repl = a.pm_transactions_repl or (300 if q else 1000)
    a.pm_repeat = a.pm_repeat or (1 if q else 2)
    a.pm_fs_mib = min(256, a.size // MIB)
    a.pm_timeout = 600.0
    a.outage = a.outage or (6.0 if q else 20.0)
    a.cpu_ios = a.cpu_ios or (20000 if q else 50000)
    a.full_timeout = 300.0
    return a


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import machine, prepare_backing

    args = parse_args(argv)
    if args.replot:
        made = plots(json.loads(args.replot.read_text()), args.plots or Path("docs/img"))
        print("\n".join(str(p) for p in made))
        return 0
    missing = [t for t in TOOLS if shutil.which(t) is None]
    why = ophiura_target_unavailable()
    if missing or why:
        say(
            f"cannot run: {'missing ' + ', '.join(missing) if missing else why} "
            "(apt-get install fio)"
        )
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    backing = args.workdir / f"disk-{args.size // MIB}M.img"
    if args.micro or args.postmark:  # the direct target's file of data
        prepare_backing(backing, args.size)
    started = time.monotonic()
    cluster = Cluster(args.workdir, args.size // MIB)
    directs: list[ConfigRun] = []
    runs: list[ConfigRun] = []
    pm: dict[str, Any] = {"skipped": "--no-postmark"}
    rec: dict[str, Any] = {"skipped": "--no-recovery"}
    cpu: dict[str, Any] = {"skipped": "--no-cpu"}
    try:
        cluster.start_ses()
        if args.micro:
            with direct_target(args.workdir, backing, args.size) as uri:
                directs.append(micro_direct(uri, args, "first", backing))
            fill_volume(cluster, args)
            for cfg in configs(args.delays, args.internet, not args.quick):
                runs.append(micro_replicated(cluster, cfg, args))
            with direct_target(args.workdir, backing, args.size) as uri:
                directs.append(micro_direct(uri, args, "last", backing))
        if args.cpu:
            if not args.micro:
                fill_volume(cluster, args)
            cpu = bench_he_cpu(cluster, args)
        if args.postmark:
            pm = bench_postmark(cluster, backing, args)
        if args.recovery:
            rec = bench_recovery(cluster, args)
    except ServerError as exc:
        say(f"ERROR: {exc}")
        rec.setdefault("error", str(exc))
    finally:
        cluster.stop()
    base = direct_baseline(directs)
    rows = results_rows(runs, base)
    rows.insert(
        0,
        {
            "key": "direct",
            "title": "direct (mean of first and last)",
            "quorum": 0,
            "near_ms": 0.0,
            **{w.key: base.get(w.key) for w in MICROS},
            **{f"{w.key}_ratio": None for w in MICROS},
        },
    )
    tg = targets(runs, base, pm, rec) if (runs or "ratio" in pm or "replay" in rec) else []
    report: dict[str, Any] = {
        "machine": machine() | {"fio": _fio_version()},
        "command": " ".join(
            ["python -m bench replication", *(argv if argv is not None else sys.argv[1:])]
        ),
        "volume_bytes": args.size,
        "seconds_per_workload": args.seconds,
        "read_miss_cache": args.read_miss_cache,
        "postmark_stack": {"stack": args.pm_stack, "mount": args.pm_mount},
        "elapsed_s": round(time.monotonic() - started, 1),
        "direct_runs": [r.to_json() for r in directs],
        "direct_baseline": base,
        "direct_spread": spread(directs),
        "configs": [r.to_json() for r in runs],
        "rows": rows,
        "postmark": pm,
        "recovery": rec,
        "he_cpu": cpu,
        "targets": tg,
    }
    if args.plots:
        report["plots"] = [str(p) for p in plots(report, args.plots)]
    (args.workdir / "replication-results.json").write_text(
        json.dumps(report, indent=2, default=str)
    )
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(markdown_results(rows))
        print()
        print(markdown_recovery(rec))
        print()
        print(markdown_cpu(cpu))
        print()
        print(markdown_targets(tg))
        sp = report["direct_spread"]
        if sp:
            print(
                "\ndirect first vs last run, (max-min)/mean: "
                + ", ".join(f"{k} {v:.0%}" for k, v in sp.items())
            )
        for r in runs:
            for k, e in r.errors.items():
                print(f"{r.config.key} {k}: {e}")
            for n in r.notes:
                print(f"{r.config.key}: {n}")
        print(f"results: {args.workdir / 'replication-results.json'}")
    errors = any(r.errors for r in runs + directs) or "error" in rec or "error" in cpu
    if args.check and (errors or any(t["ok"] is False for t in tg)):
        return 1
    return 0


def _fio_version() -> str:
    try:
        return subprocess.run(
            ["fio", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        return "?"
