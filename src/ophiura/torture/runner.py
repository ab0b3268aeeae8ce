"""One torture run end to end: start the processes, run clients and nemesis, heal, read
everything back, stop cleanly, check, report (one line and a JSON file).

Phases, each bounded in time: setup -> workload + faults (`duration` s) -> faults healed ->
clients stopped -> healing (every SE running, one active HE, every SE `up` at the newest seq;
at most `heal_timeout` s) -> final full read through the HE -> clean stop (SIGTERM syncs the
SEs) -> each SE's data file read -> checker. Every process is stopped by its PID in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophiura.torture import clients, stamp
from ophiura.torture.checker import Read, Verdict, check, diverged_sectors, write_availability
from ophiura.torture.links import LinkProxy
from ophiura.torture.nemesis import (
    Cluster,
    Nemesis,
    capabilities,
    mount_small_fs,
    powerloss_dirs,
    unmount,
)
from ophiura.torture.processes import PLANT_ENV, HeProc, SeProc, write_he_config
from ophiura.torture.schedule import FAULT_KINDS, SE_NAMES, Schedule

VOLUME = "vol"
SECRET = b"ophiura-torture-secret-0123456789"

# Planted bugs: (where, what). "harness" ones are done here and prove the checker catches the
# effect; "he" ones set PLANT_ENV for the HE processes, for the HE to act on once it reads it.
PLANTS: dict[str, tuple[str, str]] = {
    "lost-write": ("harness", "zero one acknowledged sector in every SE's data file after the run"),
    "diverge": ("harness", "change one acknowledged sector in SE b's data file after the run"),
    "stale-read": ("harness", "make one read in the history return the value before an ack"),
    "he-ack-without-send": ("he", "the HE acks one write without sending it to the SEs"),
    "he-skip-cache-update": ("he", "the HE skips one read-cache update on an acked write"),
}


@dataclass
class Options:
    """How to run a schedule (what to inject is the Schedule's)."""

    json_path: Path = Path("torture.json")
    writers: int = 3
    readers: int = 2
    iscsi: bool = True  # writer 1 and reader 1 use iSCSI, the others NBD
    volume_size: int = 16 << 20
    heal_timeout: float = 60.0
    plant: str = ""
    keep: bool = False
    history_path: Path | None = None  # where to save the whole history (JSON lines, gzip)


def plant_wired() -> bool:
    """Whether the HE reads PLANT_ENV: its name appears in the replication package's sources."""
    import ophiura.replication as rep

    root = Path(rep.__file__).parent
    return any(PLANT_ENV in p.read_text(errors="replace") for p in root.rglob("*.py"))


async def run(opts: Options, schedule: Schedule) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"ophiura-torture-{schedule.seed}-"))
    disk_dir = tmp / "se-c-disk"
    mounted = False
    hes: list[HeProc] = []
    ses: dict[str, SeProc] = {}
    links: list[LinkProxy] = []
    result: dict[str, Any] = {"seed": schedule.seed, "workdir": str(tmp)}
    try:
        if "se-disk-full" in schedule.kinds or any(
            f.kind == "se-disk-full" for f in schedule.faults
        ):
            mounted = mount_small_fs(disk_dir, f"{(opts.volume_size >> 20) + 48}M")
        want_links = "he-se-partition" in schedule.kinds or any(
            f.kind == "he-se-partition" for f in schedule.faults
        )
        caps = capabilities(disk_dir if mounted else None, want_links)
        secret_file = tmp / "secret"
        secret_file.write_bytes(SECRET)
        secret_file.chmod(0o600)
        pl = powerloss_dirs(tmp, list(SE_NAMES), caps["powerloss"])
        for n in SE_NAMES:
            data = (disk_dir / "data") if (n == "c" and mounted) else tmp / f"se-{n}"
            ses[n] = SeProc(
                n, data, secret_file, tmp, powerloss_dir=pl[n], eio_flag=tmp / f"eio-{n}"
            )
        config = tmp / "he.toml"
        cluster = Cluster(ses, hes, VOLUME, opts.volume_size, disk_dir if mounted else None)
        for se in ses.values():
            await se.start()
        if want_links:
            for n, se in ses.items():
                cluster.links[n] = LinkProxy(n, se.port)
                links.append(cluster.links[n])
                await cluster.links[n].start()
        write_he_config(
            config,
            list(ses.values()),
            (VOLUME, opts.volume_size),
            schedule.cache,
            schedule.se_delay_ms,
            {n: link.port for n, link in cluster.links.items()},
        )
        plant_he = opts.plant if PLANTS.get(opts.plant, ("",))[0] == "he" else ""
        hes.extend(HeProc(i, config, secret_file, SECRET, tmp, plant_he) for i in range(3))
        await hes[0].start(standby=False)
        for he in hes[1:]:
            await he.start(standby=True)
        await cluster.poll()
        if not cluster.active:
            raise RuntimeError("the first HE did not become active")
        result.update(await _workload(opts, schedule, cluster, caps))
    finally:
        for he in hes:
            he.terminate()
        for se in ses.values():
            se.terminate()
        for link in links:
            await link.stop()
        if mounted and not opts.keep:
            unmount(disk_dir)
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


async def _workload(
    opts: Options, schedule: Schedule, cluster: Cluster, caps: dict[str, bool]
) -> dict[str, Any]:
    hist = clients.History()
    sectors = opts.volume_size // stamp.SECTOR
    stop_faults, stop_clients, stop_poll = asyncio.Event(), asyncio.Event(), asyncio.Event()
    nemesis = Nemesis(cluster, schedule, caps, hist.t0)
    loop = asyncio.get_running_loop()

    async def poller() -> None:
        while not stop_poll.is_set():
            await cluster.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_poll.wait(), 0.5)

    poll_task = loop.create_task(poller())
    tasks = [
        loop.create_task(
            clients.writer(
                i + 1,
                hist,
                cluster.targets,
                VOLUME,
                sectors,
                stop_clients,
                schedule.seed,
                iscsi=opts.iscsi and i == 0,
            )
        )
        for i in range(opts.writers)
    ]
    tasks += [
        loop.create_task(
            clients.reader(
                i + 1,
                hist,
                cluster.targets,
                VOLUME,
                sectors,
                stop_clients,
                schedule.seed,
                iscsi=opts.iscsi and i == 0,
            )
        )
        for i in range(opts.readers)
    ]
    nemesis_task = loop.create_task(nemesis.run(stop_faults))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(nemesis_task), schedule.duration)
    stop_faults.set()
    await nemesis_task
    workload_end = hist.now()
    stop_clients.set()
    _, pending = await asyncio.wait(tasks, timeout=clients.OP_TIMEOUT + 10)
    for t in pending:
        t.cancel()

    heal_t0 = time.monotonic()
    healed, heal_note = await _heal(cluster, nemesis, opts.heal_timeout)
    heal_s = round(time.monotonic() - heal_t0, 2)
    stop_poll.set()
    await poll_task

    final_error = None
    if cluster.targets():
        head = cluster.targets()[0]
        final_error = await clients.full_read(head, VOLUME, sectors, hist, "final")
    else:
        final_error = "no active HE"

    for he in cluster.hes:
        he.terminate()
    for se in cluster.ses.values():
        se.terminate()
    images = {}
    for name, se in cluster.ses.items():
        try:
            images[name] = se.data_file(VOLUME).read_bytes()
        except OSError as exc:
            images[name] = b""
            heal_note += f"; SE {name} data file: {exc}"
    planted = _plant_after(opts.plant, hist, images)
    t = hist.now()
    for name, image in images.items():
        runs = stamp.decode_runs(
            image[: sectors * stamp.SECTOR].ljust(sectors * stamp.SECTOR, b"\0"), 0
        )
        hist.reads.append(Read(f"disk-{name}", t, t, tuple(runs), True))

    if opts.history_path is not None:
        save_history(opts.history_path, hist)
    verdict: Verdict = check(hist.writes, hist.reads)
    verdict.diverged, div_examples = diverged_sectors(images)
    verdict.examples.extend(div_examples)
    split = _split_brain(cluster.samples, hist)
    return _report(
        opts,
        schedule,
        nemesis,
        hist,
        verdict,
        caps,
        {
            "healed": healed,
            "heal_s": heal_s,
            "heal_note": heal_note,
            "final_read_error": final_error,
            "split_brain": split,
            "write_availability": write_availability(hist.writes, 0.0, workload_end),
            "workload_s": round(workload_end, 2),
            "planted": planted,
        },
    )


def save_history(path: Path, hist: clients.History) -> None:
    """Every write and read, one JSON object a line (times in seconds from the start; a write's
    `end` null when it was not acknowledged; a read's runs as [first lba, count, value]), for
    looking into a violation: `stamp.describe(value)` names the write."""
    import gzip
    import json

    with gzip.open(path, "wt") as f:
        for w in hist.writes:
            rec = {"write": stamp.describe(w.id), "lba": w.lba, "count": w.count}
            f.write(json.dumps({**rec, "start": w.start, "end": w.end}) + "\n")
        for r in hist.reads:
            runs = [[a, n, stamp.describe(v)] for a, n, v in r.runs]
            rec = {"read": r.label, "start": r.start, "end": r.end, "final": r.final}
            f.write(json.dumps({**rec, "runs": runs}) + "\n")


async def _heal(cluster: Cluster, nemesis: Nemesis, timeout: float) -> tuple[bool, str]:
    """Every SE running, one active HE, every SE up at the newest seq; bounded."""
    for se in cluster.ses.values():
        se.resume()
        if not se.running:
            await se.start()
    for link in cluster.links.values():
        link.release()
    if cluster.disk_full_dir is not None:
        with contextlib.suppress(FileNotFoundError):
            (cluster.disk_full_dir / "ballast").unlink()
    await cluster.poll()
    await nemesis.normalize_hes()
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        await cluster.poll()
        last = await cluster.primary_status()
        if last and all(
            s["state"] == "up" and s["acked_seq"] == last["latest_seq"] for s in last["ses"]
        ):
            return True, ""
        await asyncio.sleep(0.2)
    if last is None:
        return False, "no active HE"
    states = ", ".join(f"{s['name']}={s['state']}@{s['acked_seq']}" for s in last["ses"])
    return False, f"not healed after {timeout}s: latest {last['latest_seq']}; {states}"


def _plant_after(plant: str, hist: clients.History, images: dict[str, bytes]) -> str:
    """Harness-side planted bugs, applied to the evidence the checker reads."""
    acked = [w for w in hist.writes if w.end is not None]
    if not plant or PLANTS[plant][0] != "harness" or not acked:
        return ""
    if plant in ("lost-write", "diverge"):
        w = max(acked, key=lambda w: w.end or 0.0)
        off = w.lba * stamp.SECTOR
        for name in images if plant == "lost-write" else ["b"]:
            img = bytearray(images[name])
            if plant == "lost-write":
                img[off : off + stamp.SECTOR] = bytes(stamp.SECTOR)
            else:
                img[off + 100] ^= 0xFF
            images[name] = bytes(img)
        return f"{plant}: lba {w.lba} ({stamp.describe(w.id)})"
    by_id = {w.id: w for w in acked}
    for i, r in enumerate(hist.reads):
        for j, (first, count, value) in enumerate(r.runs):
            w = by_id.get(value)
            if w is not None and w.end is not None and w.end < r.start:
                runs = list(r.runs)
                runs[j] = (first, count, stamp.INITIAL)
                hist.reads[i] = Read(r.label, r.start, r.end, tuple(runs), r.final)
                return f"stale-read: {r.label} lba {first}+{count} made to return initial"
    return "stale-read: no read followed an acknowledged write (nothing planted)"


def _split_brain(samples: list[dict[str, Any]], hist: clients.History) -> int:
    """Poll samples in which two HEs were active and unfenced at the same epoch and both had
    acknowledged a write within the second before: two owners acking under one ballot."""
    count = 0
    for s in samples:
        t = s["t"] - hist.t0
        heads = [
            (n, h["epoch"])
            for n, h in s["hes"].items()
            if h["role"] == "active" and not h["fenced"]
        ]
        epochs: dict[Any, list[str]] = {}
        for n, e in heads:
            epochs.setdefault(e, []).append(n)
        for names in epochs.values():
            acking = [n for n in names if any(t - 1 <= a <= t for a in hist.acks_by_he.get(n, []))]
            if len(acking) >= 2:
                count += 1
    return count


def _report(
    opts: Options,
    schedule: Schedule,
    nemesis: Nemesis,
    hist: clients.History,
    verdict: Verdict,
    caps: dict[str, bool],
    extra: dict[str, Any],
) -> dict[str, Any]:
    injected: dict[str, int] = {}
    for r in nemesis.records:
        if r.outcome == "done":
            injected[r.fault.kind] = injected.get(r.fault.kind, 0) + 1
    unavailable = sorted(
        k
        for k, v in FAULT_KINDS.items()
        if v.needs and not caps.get(v.needs) and (k in schedule.kinds or v.weight == 0)
    )
    acked = sum(1 for w in hist.writes if w.end is not None)
    return {
        "seed": schedule.seed,
        "cache": schedule.cache,
        "faults_injected": injected,
        "faults_total": sum(injected.values()),
        "faults_not_injected": {
            o: sum(1 for r in nemesis.records if r.outcome == o)
            for o in ("skipped", "unavailable", "error")
        },
        "unavailable_kinds": unavailable,
        "acked_writes": acked,
        "failed_writes": len(hist.writes) - acked,
        "reads": sum(1 for r in hist.reads if not r.final),
        "flushes": hist.flushes,
        "reconnects": hist.reconnects,
        "by_protocol": dict(sorted(hist.by_protocol.items())),
        **verdict.to_json(),
        **extra,
        "plant": opts.plant,
        "plant_wired": plant_wired() if PLANTS.get(opts.plant, ("",))[0] == "he" else None,
        "faults": [r.to_json() for r in nemesis.records],
        "schedule": schedule.to_json(),
    }


def failed(result: dict[str, Any]) -> bool:
    return bool(
        result["lost"]
        or result["stale"]
        or result["corrupt"]
        or result["diverged"]
        or result["split_brain"]
        or not result["healed"]
        or result["final_read_error"]
    )


def _by(lost_by: dict[str, int]) -> str:
    return f"({', '.join(f'{k} {n}' for k, n in sorted(lost_by.items()))})" if lost_by else ""


def one_line(result: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result["faults_injected"].items()))
    na = result["unavailable_kinds"]
    return (
        f"seed={result['seed']} cache={'on' if result['cache'] else 'off'} "
        f"faults={result['faults_total']} ({kinds}) acked={result['acked_writes']} "
        f"lost={result['lost']}{_by(result['lost_by'])} stale={result['stale']} "
        f"dirty={result.get('dirty', 0)} "
        f"corrupt={result['corrupt']} "
        f"diverged={result['diverged']} split_brain={result['split_brain']} "
        f"write_avail={result['write_availability']:.2f} "
        f"healed={'yes' if result['healed'] else 'NO'}"
        + (f" unavailable=[{','.join(na)}]" if na else "")
        + (f" plant={result['plant']}" if result["plant"] else "")
        + (" -> FAIL" if failed(result) else " -> PASS")
    )
