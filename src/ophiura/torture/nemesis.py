"""The nemesis: executes a schedule's faults against the real processes, several at once.

Each fault runs as its own task at its scheduled offset; faults on different targets overlap
freely, faults on the same SE (or on the HEs) take turns (a per-target lock, waited for at most
`BUSY_WAIT` s, else the fault is recorded as skipped). Every fault heals itself before its task
ends. HANDLERS is the table from fault kind to the coroutine that does it; a kind whose
capability is missing at run time is recorded as unavailable, never faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.replication.he.control import ControlError
from ophiura.torture.clients import Target
from ophiura.torture.links import LinkProxy
from ophiura.torture.processes import HeProc, SeProc
from ophiura.torture.schedule import FAULT_KINDS, Fault, Schedule

BUSY_WAIT = 15.0
RECOVERING_WAIT = 10.0


def capabilities(disk_full_dir: Path | None, links: bool) -> dict[str, bool]:
    """What this machine and this code base can do, decided once per run."""
    return {
        "links": links,
        "powerloss": importlib.util.find_spec("ophiura.replication.se.powerloss") is not None,
        "root": os.geteuid() == 0 and disk_full_dir is not None,
        "eio": importlib.util.find_spec("ophiura.replication.se.disk_io") is not None,
    }


@dataclass
class Cluster:
    """The processes of one run and what the clients should talk to."""

    ses: dict[str, SeProc]
    hes: list[HeProc]
    volume: str
    size: int
    disk_full_dir: Path | None = None  # SE c's data dir when it is a small tmpfs
    links: dict[str, LinkProxy] = field(default_factory=dict)  # HE->SE forwarders, by SE
    active: list[HeProc] = field(default_factory=list)  # HEs that say active and not fenced
    samples: list[dict[str, Any]] = field(default_factory=list)  # the poller's observations

    def targets(self) -> list[Target]:
        return [Target(h.name, h.nbd, h.iscsi) for h in self.active if h.running]

    async def poll(self) -> list[HeProc]:
        """Ask every running HE; keep the active, unfenced ones (clients spread over them)."""
        heads: list[HeProc] = []
        sample: dict[str, Any] = {}
        for he in self.hes:
            st = await he.status()
            if st is None:
                continue
            vol = next((v for v in st["volumes"] if v["name"] == self.volume), None)
            fenced = bool(vol and vol["fenced"])
            sample[he.name] = {"role": st["role"], "fenced": fenced, "epoch": vol and vol["epoch"]}
            if st["role"] == "active" and vol is not None and not fenced:
                heads.append(he)
        self.active = heads
        self.samples.append({"t": time.monotonic(), "hes": sample})
        return heads

    async def primary_status(self) -> dict[str, Any] | None:
        """The volume status as the active HE with the highest epoch sees it."""
        best: tuple[int, dict[str, Any]] | None = None
        for he in self.active:
            st = await he.status()
            vol = st and next((v for v in st["volumes"] if v["name"] == self.volume), None)
            if vol and (best is None or vol["epoch"] > best[0]):
                best = (vol["epoch"], vol)
        return best[1] if best else None


@dataclass
class FaultRecord:
    fault: Fault
    started: float = 0.0
    ended: float = 0.0
    outcome: str = "pending"  # done, skipped, unavailable, error
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        f = self.fault
        return {
            "at": f.at,
            "kind": f.kind,
            "target": f.target,
            "duration": f.duration,
            "params": f.params,
            "started": round(self.started, 3),
            "ended": round(self.ended, 3),
            "outcome": self.outcome,
            "notes": self.notes,
        }


class Nemesis:
    def __init__(self, cluster: Cluster, schedule: Schedule, caps: dict[str, bool], t0: float):
        self.cluster = cluster
        self.schedule = schedule
        self.caps = caps
        self.t0 = t0
        self.records: list[FaultRecord] = []
        self.locks: dict[str, asyncio.Lock] = {}
        self.handlers: dict[str, Callable[[Fault, FaultRecord], Awaitable[None]]] = {
            "se-kill": self._se_kill,
            "se-pause": self._se_pause,
            "se-restart-recovering": self._se_restart_recovering,
            "se-slow": self._se_slow,
            "se-powerloss": self._se_powerloss,
            "se-disk-full": self._se_disk_full,
            "se-eio": self._se_eio,
            "he-se-partition": self._he_se_partition,
            "he-kill-takeover": self._he_kill_takeover,
            "concurrent-takeover": self._concurrent_takeover,
            "resize-se-down": self._resize_se_down,
        }
        missing = set(FAULT_KINDS) - set(self.handlers)
        assert not missing, f"fault kinds without a handler: {missing}"

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, stop: asyncio.Event) -> None:
        """Start each fault at its offset (until `stop`), then wait for all to heal."""
        tasks: list[asyncio.Task[None]] = []
        for fault in self.schedule.faults:
            delay = fault.at - self.now()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                break
            record = FaultRecord(fault)
            self.records.append(record)
            tasks.append(asyncio.get_running_loop().create_task(self._one(fault, record)))
        if tasks:
            await asyncio.wait(tasks, timeout=120)
        for t in tasks:
            t.cancel()

    async def _one(self, fault: Fault, record: FaultRecord) -> None:
        kind = FAULT_KINDS[fault.kind]
        record.started = self.now()
        if (kind.needs and not self.caps.get(kind.needs)) or fault.kind not in self.handlers:
            record.outcome = "unavailable"
            record.ended = record.started
            return
        lock = self.locks.setdefault(fault.target, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), BUSY_WAIT)
        except TimeoutError:
            record.outcome = "skipped"
            record.notes.append("target busy with an earlier fault")
            record.ended = self.now()
            return
        try:
            record.started = self.now()
            await self.handlers[fault.kind](fault, record)
            record.outcome = "done"
        except Exception as exc:  # a fault that went wrong is reported, the run goes on
            record.outcome = "error"
            record.notes.append(f"{type(exc).__name__}: {exc}")
        finally:
            lock.release()
            record.ended = self.now()

    # ---- SE faults ------------------------------------------------------------------------
    def _se(self, fault: Fault) -> SeProc:
        return self.cluster.ses[fault.target]

    async def _restart(self, se: SeProc, record: FaultRecord) -> None:
        if not se.running:
            await se.start()
            record.notes.append(f"restarted at {self.now():.2f}")

    async def _se_kill(self, fault: Fault, record: FaultRecord) -> None:
        se = self._se(fault)
        se.kill9()
        await asyncio.sleep(fault.duration)
        await self._restart(se, record)

    async def _se_pause(self, fault: Fault, record: FaultRecord) -> None:
        se = self._se(fault)
        se.pause()
        try:
            await asyncio.sleep(fault.duration)
        finally:
            se.resume()

    async def _se_slow(self, fault: Fault, record: FaultRecord) -> None:
        se = self._se(fault)
        end = time.monotonic() + fault.duration
        try:
            while time.monotonic() < end:
                se.pause()
                await asyncio.sleep(0.03)
                se.resume()
                await asyncio.sleep(0.07)
        finally:
            se.resume()

    async def _se_restart_recovering(self, fault: Fault, record: FaultRecord) -> None:
        se = self._se(fault)
        se.kill9()
        await asyncio.sleep(fault.duration)
        await self._restart(se, record)
        deadline = time.monotonic() + RECOVERING_WAIT
        seen = ""
        while time.monotonic() < deadline and not seen:
            vol = await self.cluster.primary_status()
            state = (
                next((s["state"] for s in vol["ses"] if s["name"] == se.name), "") if vol else ""
            )
            if state.startswith("recovering"):
                seen = state
            else:
                await asyncio.sleep(0.02)
        if seen:
            se.kill9()
            record.notes.append(f"killed again while {seen}")
            await asyncio.sleep(0.2)
            await self._restart(se, record)
        else:
            record.notes.append("never seen recovering (recovered between two polls)")

    async def _se_powerloss(self, fault: Fault, record: FaultRecord) -> None:
        se = self._se(fault)
        se.kill9()
        assert se.powerloss_dir is not None
        cmd = [sys.executable, "-m", "ophiura.replication.se.powerloss", str(se.powerloss_dir)]
        cmd += ["--seed", str(fault.params.get("seed", 0)), "--mode", fault.params["mode"]]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace").strip().splitlines()
        record.notes.append(f"powerloss rc {proc.returncode}: {text[-1] if text else ''}")
        if proc.returncode != 0:
            raise RuntimeError(f"powerloss tool failed ({proc.returncode})")
        await asyncio.sleep(fault.duration)
        await self._restart(se, record)

    async def _se_disk_full(self, fault: Fault, record: FaultRecord) -> None:
        assert self.cluster.disk_full_dir is not None
        ballast = self.cluster.disk_full_dir / "ballast"
        try:
            fill(ballast)
            left = os.statvfs(self.cluster.disk_full_dir)
            record.notes.append(f"free {left.f_bavail * left.f_frsize} bytes")
            await asyncio.sleep(fault.duration)
        finally:
            with contextlib.suppress(FileNotFoundError):
                ballast.unlink()

    async def _se_eio(self, fault: Fault, record: FaultRecord) -> None:
        se = self._se(fault)
        assert se.eio_flag is not None
        se.eio_flag.touch()
        try:
            await asyncio.sleep(fault.duration)
            st = await self.cluster.primary_status()
            states = st and {r["name"]: r["state"] for r in st.get("ses", [])}
            record.notes.append(f"replicas while failing: {states}")
        finally:
            se.eio_flag.unlink(missing_ok=True)

    async def _he_se_partition(self, fault: Fault, record: FaultRecord) -> None:
        link = self.cluster.links[fault.target]
        link.hold(fault.params["direction"])
        try:
            await asyncio.sleep(fault.duration)
        finally:
            link.release()

    async def _resize_se_down(self, fault: Fault, record: FaultRecord) -> None:
        se = self._se(fault)
        se.kill9()
        try:
            heads = self.cluster.active
            if not heads:
                record.notes.append("no active HE to resize through")
            else:
                new = self.cluster.size + (1 << 20)
                try:
                    await heads[0].call(
                        "volume-resize", timeout=30, name=self.cluster.volume, size=new
                    )
                    self.cluster.size = new
                    record.notes.append(f"resized to {new}")
                except (ControlError, OSError, TimeoutError) as exc:
                    record.notes.append(f"resize refused: {exc}")
            await asyncio.sleep(fault.duration)
        finally:
            await self._restart(se, record)

    # ---- HE faults ------------------------------------------------------------------------
    async def _roles(self) -> dict[str, list[HeProc]]:
        """HEs by the role they report now (a fresh status each; "down" if no answer)."""
        roles: dict[str, list[HeProc]] = {}
        for he in self.cluster.hes:
            st = await he.status()
            roles.setdefault(st["role"] if st else "down", []).append(he)
        return roles

    async def _takeover(self, he: HeProc, record: FaultRecord) -> bool:
        t = self.now()
        try:
            await he.call("takeover", timeout=30)
            record.notes.append(f"{he.name} took over in {self.now() - t:.2f}s")
            return True
        except (ControlError, OSError, TimeoutError) as exc:
            record.notes.append(f"{he.name} takeover failed: {exc}")
            return False

    async def _he_kill_takeover(self, fault: Fault, record: FaultRecord) -> None:
        roles = await self._roles()
        victims = roles.get("active", [])
        for he in victims:
            he.kill9()
        record.notes.append(f"killed {','.join(h.name for h in victims) or 'no active HE'}")
        standbys = roles.get("standby", [])
        if standbys:
            await self._takeover(standbys[0], record)
        await self.cluster.poll()
        await self.normalize_hes(record)

    async def _concurrent_takeover(self, fault: Fault, record: FaultRecord) -> None:
        roles = await self._roles()
        victims = roles.get("active", []) if fault.params.get("kill_active") else []
        for he in victims:
            he.kill9()
        if victims:
            record.notes.append(f"killed {','.join(h.name for h in victims)}")
        contenders = roles.get("standby", [])[:2]
        await asyncio.gather(*(self._takeover(h, record) for h in contenders))
        heads = await self.cluster.poll()
        record.notes.append(f"active and unfenced after: {','.join(h.name for h in heads)}")
        await asyncio.sleep(max(fault.duration, 1.0))  # clients spread over every active HE
        await self.cluster.poll()
        await self.normalize_hes(record)

    async def normalize_hes(self, record: FaultRecord | None = None) -> None:
        """Back to one active HE and the others standby: keep the active, unfenced HE with the
        highest epoch; restart every other HE as a standby (a dead one, a fenced one, a second
        active one); with no active HE left, a standby takes over."""
        heads = self.cluster.active
        keep: HeProc | None = None
        best = -1
        for he in heads:
            st = await he.status()
            vol = st and next((v for v in st["volumes"] if v["name"] == self.cluster.volume), None)
            if vol and vol["epoch"] > best:
                keep, best = he, vol["epoch"]
        for he in self.cluster.hes:
            if he is keep:
                continue
            st = await he.status()
            if st is not None and st["role"] == "standby":
                continue
            he.terminate()
            await he.start(standby=True)
            if record is not None:
                record.notes.append(f"{he.name} restarted as standby")
        if keep is None:
            for he in self.cluster.hes:
                if await self._takeover(he, record or FaultRecord(Fault(0, "", "", 0))):
                    break
        await self.cluster.poll()


def fill(path: Path) -> None:
    """Allocate `path` until the filesystem says ENOSPC (chunks halving down to 4 KiB)."""
    chunk, offset = 8 << 20, 0
    with open(path, "wb") as f:
        while chunk >= 4096:
            try:
                os.posix_fallocate(f.fileno(), offset, chunk)
                offset += chunk
            except OSError:
                chunk //= 2


def powerloss_dirs(root: Path, names: list[str], available: bool) -> dict[str, Path | None]:
    """Where each SE keeps its undo journal of unsynced writes (only if the tool exists)."""
    return {n: (root / f"powerloss-{n}" if available else None) for n in names}


def mount_small_fs(path: Path, size: str) -> bool:
    """A small tmpfs at `path` (root only): the disk that the disk-full fault fills."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        timeout=10,
    )
    return res.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)
