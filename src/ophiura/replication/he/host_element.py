"""The host element (StarFish §3): SE sessions, replicated volumes, their frontends, takeover.

An HE is *active* (owns its volumes: it claimed their epoch on a majority of SEs) or *standby*
(connected to the SEs, warm, serving nothing). Becoming active is the same procedure at start
and at takeover (`activate`): claim every volume (raise the epoch, read the highest sequence
number — `takeover.claim_volume`), attach the SEs (each gets the recovery it needs), restore the
replicated SCSI state into a fresh state_dir, then start the iSCSI and NBD frontends. Laggard
SEs recover in the background; I/O is served as soon as Q SEs are up to date.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophiura.frontends import Export, Frontends
from ophiura.metrics_http import MetricsServer
from ophiura.replication.he import he_metrics
from ophiura.replication.he.config import HeConfig, check_volume_name
from ophiura.replication.he.control import ControlError, ControlServer
from ophiura.replication.he.plant import Plant
from ophiura.replication.he.quorum import config_warning, takeover_quorum
from ophiura.replication.he.scsi_state import (
    META_SIZE,
    ScsiStateMirror,
    is_meta_volume,
    meta_volume_name,
)
from ophiura.replication.he.se_session import SeSession
from ophiura.replication.he.takeover import TakeoverError, claim_volume
from ophiura.replication.he.volume import HostElementVolume, VolumeConfig
from ophiura.scsi.target import ScsiTarget
from ophiura.sdnotify import Notifier
from ophiura.serve import stop_on_signals

log = logging.getLogger(__name__)


@dataclass
class ExportedVolume:
    """A volume with everything around it: its SCSI-state companion, target, mirror."""

    name: str
    data: HostElementVolume
    meta: HostElementVolume
    mirror: ScsiStateMirror
    scsi: ScsiTarget
    iqn: str
    state_dir: Path


class HostElement:
    def __init__(self, config: HeConfig, secret: bytes) -> None:
        self.config = config
        self.secret = secret
        self.sessions = [SeSession(spec, secret) for spec in config.ses]
        self.role = "standby" if config.standby else "starting"
        self.volumes: dict[str, ExportedVolume] = {}
        self.frontends = Frontends(config.iscsi, config.nbd)
        self.control = ControlServer(self.handle, secret, *config.control)
        self.metrics: MetricsServer | None = None
        if config.metrics is not None:
            host, port = config.metrics
            self.metrics = MetricsServer(
                lambda: he_metrics.render(self), host, port, config.metrics_token_file
            )
        self.warning = config_warning(len(config.ses), config.quorum)
        self.takeover_info: dict[str, Any] | None = None
        # This process's half of every ballot it claims: random, so two HEs (or one HE and
        # its restarted self) never claim the same ballot, whatever their names.
        self.he_id = secrets.randbits(63) | 1
        self._activation_started: float | None = None
        self._lock = asyncio.Lock()  # admin operations only (never on the I/O path)
        # The SCSI state's local copy (the SEs hold the real one): a scratch dir unless given,
        # removed on stop so that short-lived HEs (tests, benchmarks) leave nothing behind.
        self._scratch_state = config.state_dir is None
        self._state_root = config.state_dir or Path(tempfile.mkdtemp(prefix="ophiura-he-"))
        if self.warning:
            log.warning("!!! %s !!!", self.warning)

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        for s in self.sessions:
            s.start()
        await self.control.start()
        if self.metrics is not None:
            await self.metrics.start()
        if not self.config.standby:
            await self.activate()

    async def stop(self) -> None:
        await self.control.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        await self.frontends.stop()
        for vol in list(self.volumes.values()):
            await self._close_volume(vol)
        self.volumes.clear()
        for s in self.sessions:
            await s.close()
        if self._scratch_state:
            shutil.rmtree(self._state_root, ignore_errors=True)

    async def run_until_signalled(self) -> None:
        sd = Notifier.from_environ()  # systemd Type=notify: READY=1 once started
        stop = stop_on_signals()
        try:
            await self.start()  # a start that fails (no SEs reachable) stops what it began
            sd.ready(f"{self.role}, {len(self.volumes)} volume(s)")
            await stop.wait()
        finally:
            sd.stopping("stopping")
            log.info("stopping")
            await self.stop()

    async def wait_connected(self, count: int, timeout: float) -> int:
        """Until `count` SEs are connected or timeout; how many are."""
        deadline = time.monotonic() + timeout
        while True:
            n = sum(1 for s in self.sessions if s.connected)
            if n >= count or time.monotonic() >= deadline:
                return n
            await asyncio.sleep(0.02)

    # ---- becoming active -----------------------------------------------------------------
    async def activate(self, connect_timeout: float = 10.0) -> dict[str, Any]:
        """Claim every volume, attach SEs, restore SCSI state, start the frontends."""
        async with self._lock:
            if self.role == "active":
                raise ControlError("this HE is already active")
            t0 = time.monotonic()
            self._activation_started = t0
            need = takeover_quorum(len(self.sessions), self.config.quorum)
            if await self.wait_connected(need, connect_timeout) < need:
                raise TakeoverError(
                    f"only {sum(s.connected for s in self.sessions)} of {len(self.sessions)} SEs "
                    f"reachable after {connect_timeout}s; need {need}"
                )
            # every SE that can answer within a short grace period joins the claim
            await self.wait_connected(len(self.sessions), 0.2)
            names = dict(self.config.volumes)
            for name, size in (await self._volumes_on_ses()).items():
                names.setdefault(name, size)
            results = await asyncio.gather(
                *(self._open_volume(name, size) for name, size in names.items()),
                return_exceptions=True,
            )
            errors = [
                f"{n}: {r}" for n, r in zip(names, results, strict=True) if isinstance(r, Exception)
            ]
            for err in errors:
                log.error("activation: %s", err)
            await self.frontends.start()
            self.role = "active"
            elapsed = time.monotonic() - t0
            info = {
                "activated_s": round(elapsed, 4),
                "volumes": {
                    name: {"epoch": v.data.epoch, "seq": v.data.latest_seq}
                    for name, v in self.volumes.items()
                },
                "errors": errors,
            }
            log.info("HE active in %.3fs: %s", elapsed, ", ".join(self.volumes) or "no volumes")
            return info

    async def takeover(self) -> dict[str, Any]:
        """`ophiura takeover`: a standby becomes the active HE (the old one is fenced)."""
        if self.role == "active":
            raise ControlError("this HE is already active: nothing to take over")
        t0 = time.monotonic()
        info = await self.activate()
        self.takeover_info = {"requested_at": t0, **info}
        return info

    async def _volumes_on_ses(self) -> dict[str, int]:
        from ophiura.replication.wire.client import SeError

        found: dict[str, int] = {}
        live = [s for s in self.sessions if s.connected]
        results = await asyncio.gather(
            *(asyncio.wait_for(s.client.list_volumes(), 5.0) for s in live), return_exceptions=True
        )
        for s, res in zip(live, results, strict=True):
            if isinstance(res, (SeError, OSError, TimeoutError)):
                log.warning("SE %s: cannot list volumes: %s", s.name, res)
                continue
            if isinstance(res, BaseException):
                raise res
            for vs in res:
                if not is_meta_volume(vs.volume):
                    found[vs.volume] = max(found.get(vs.volume, 0), vs.size)
        return found

    async def _open_volume(self, name: str, size: int) -> ExportedVolume:
        cfg = self.config
        bs = cfg.block_size
        claim, mclaim = await asyncio.gather(
            claim_volume(self.sessions, name, size, bs, cfg.quorum, he_id=self.he_id),
            claim_volume(
                self.sessions, meta_volume_name(name), META_SIZE, bs, cfg.quorum, he_id=self.he_id
            ),
        )
        data = HostElementVolume(
            VolumeConfig(
                name,
                claim.size,
                cfg.quorum,
                block_size=claim.block_size,
                queue_bytes=cfg.queue_bytes,
                cache_bytes=cfg.cache_bytes,
                evict_wait=cfg.evict_wait,
            ),
            self.sessions,
            epoch=claim.epoch,
            he_id=claim.he_id,
            base_ballot=claim.base_ballot,
            next_seq=claim.base_seq + 1,
            epoch_base=claim.base_seq,
        )
        meta = HostElementVolume(
            VolumeConfig(
                meta_volume_name(name),
                META_SIZE,
                cfg.quorum,
                block_size=mclaim.block_size,
                queue_bytes=4 << 20,
                cache_bytes=0,
                evict_wait=cfg.evict_wait,
            ),
            self.sessions,
            epoch=mclaim.epoch,
            he_id=mclaim.he_id,
            base_ballot=mclaim.base_ballot,
            next_seq=mclaim.base_seq + 1,
            epoch_base=mclaim.base_seq,
        )
        data.plant = Plant.from_env(name)  # None unless the torture harness planted a bug
        data.start()
        meta.start()
        await asyncio.gather(data.wait_ready(3.0), meta.wait_ready(3.0))
        state_dir = self._state_root / name
        mirror = ScsiStateMirror(meta, state_dir)
        try:
            await mirror.restore()
        except Exception:
            await data.close()
            await meta.close()
            raise
        iqn = cfg.iqn(name)
        scsi = ScsiTarget(iqn, {0: data}, state_dir=state_dir)
        mirror.serve_pr(scsi.logical_unit(0))  # a PR OUT completes once Q SEs hold it
        mirror.start()
        vol = ExportedVolume(name, data, meta, mirror, scsi, iqn, state_dir)
        self.volumes[name] = vol
        self.frontends.add(Export(name, iqn, scsi, data, cfg.chap, initiators=cfg.acl(name)))
        return vol

    async def _close_volume(self, vol: ExportedVolume) -> None:
        await vol.mirror.stop()
        await vol.data.close()
        await vol.meta.close()

    # ---- volume admin --------------------------------------------------------------------
    def _need_active(self) -> None:
        if self.role != "active":
            raise ControlError(f"this HE is {self.role}: volume admin needs the active HE")

    async def create_volume(self, name: str, size: int) -> dict[str, Any]:
        self._need_active()
        check_volume_name(name)
        if size <= 0 or size % 4096:
            raise ControlError(f"size {size} must be a positive multiple of 4096")
        async with self._lock:
            if name in self.volumes:
                raise ControlError(f"volume {name} exists")
            vol = await self._open_volume(name, size)
        return vol.data.status()

    async def resize_volume(self, name: str, size: int) -> dict[str, Any]:
        self._need_active()
        vol = self._volume(name)
        await vol.data.resize(size)
        vol.scsi.capacity_changed(0)
        return vol.data.status()

    async def delete_volume(self, name: str) -> dict[str, Any]:
        from ophiura.replication.wire.client import SeError

        self._need_active()
        async with self._lock:
            vol = self._volume(name)
            self.frontends.remove(vol.name)
            self.volumes.pop(name, None)
            await self._close_volume(vol)
            deleted, errors = [], []
            for s in self.sessions:
                if not s.connected:
                    errors.append(f"{s.name}: not connected")
                    continue
                try:
                    for vname in (name, meta_volume_name(name)):
                        await asyncio.wait_for(s.client.delete_volume(vname), 10.0)
                    deleted.append(s.name)
                except (SeError, OSError, TimeoutError) as exc:
                    errors.append(f"{s.name}: {exc}")
        return {"deleted_on": deleted, "errors": errors}

    def _volume(self, name: str) -> ExportedVolume:
        try:
            return self.volumes[name]
        except KeyError:
            raise ControlError(f"no volume {name!r}") from None

    # ---- status and control --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cfg = self.config
        takeover = None
        if self.takeover_info is not None:
            t0 = self.takeover_info["requested_at"]
            firsts = [v.data.first_io_at for v in self.volumes.values() if v.data.first_io_at]
            takeover = {
                "activated_s": self.takeover_info["activated_s"],
                "first_io_s": round(min(firsts) - t0, 4) if firsts else None,
            }
        volumes = []
        for v in self.volumes.values():
            st = v.data.status()
            st["iqn"] = v.iqn
            st["scsi_state_generation"] = v.mirror.generation
            st["scsi_state_error"] = v.mirror.last_error
            volumes.append(st)
        return {
            "role": self.role,
            "quorum": cfg.quorum,
            "n": len(self.sessions),
            "warning": self.warning,
            "ses": [
                {
                    "name": s.name,
                    "address": f"{s.spec.host}:{s.spec.port}",
                    "connected": s.connected,
                    "rtt_ms": None if not s.connected else round(s.rtt * 1e3, 3),
                    "delay_ms": s.spec.delay_ms,
                    "rate_mbit": s.spec.rate_mbit,
                    "last_error": s.last_error,
                }
                for s in self.sessions
            ],
            "volumes": volumes,
            "frontends": {
                **self.frontends.listening(),
                "control": f"{cfg.control[0]}:{self.control.port}",
                "iscsi_chap": "off"
                if cfg.chap is None
                else "mutual"
                if cfg.chap.mutual_user
                else "on",
                "iscsi_acl": sorted({f"{v or '*'}={iqn}" for v, iqn in cfg.initiators}),
            },
            "exposure": self.frontends.warnings(),  # listeners beyond loopback open to anyone
            "state_dir": str(self._state_root),
            "takeover": takeover,
        }

    async def handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op == "status":
            return self.status()
        if op == "takeover":
            try:
                return await self.takeover()
            except TakeoverError as exc:
                raise ControlError(str(exc)) from exc
        if op == "volume-list":
            return [
                {"name": v.name, "size": v.data.size, "iqn": v.iqn, "read_only": v.data.read_only}
                for v in self.volumes.values()
            ]
        if op == "volume-create":
            return await self.create_volume(str(request["name"]), int(request["size"]))
        if op == "volume-resize":
            return await self.resize_volume(str(request["name"]), int(request["size"]))
        if op == "volume-delete":
            return await self.delete_volume(str(request["name"]))
        raise ControlError(f"unknown op {op!r}")
