"""`ophiura target`: iSCSI targets with their LUNs (and NBD exports) served until stopped.

From the command line, one backing file as LUN 0 of one target (and, with `--nbd`, as an NBD
export too: the "direct" baseline for the StarFish benchmarks); from a TOML file
(target_config.py), several targets on one or more portals, each with several LUNs, an ACL and
CHAP. The command-line form is turned into the same `TargetsConfig`, so both run one code path.

Assembles the layers — BlockDevices, one SCSI device server per target, an iSCSI portal per
listen address, one NBD server, the status socket (target_admin.py) — and owns their lifetime:
SIGTERM/SIGINT stop the portals (sessions see a clean close), flush the backing files and exit 0.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ophiura.block.device import BlockDeviceError
from ophiura.block.file import FileBlockDevice
from ophiura.frontends import Export, Frontends, NbdListen
from ophiura.iscsi.chap import Credentials
from ophiura.nbd.security import NbdSecurity
from ophiura.pr_tool import type_name
from ophiura.scsi.target import ScsiTarget
from ophiura.sdnotify import Notifier
from ophiura.serve import stop_on_signals
from ophiura.target_admin import StatusSocket
from ophiura.target_config import LunSpec, TargetsConfig, TargetSpec

log = logging.getLogger(__name__)

DEFAULT_IQN = "iqn.2026-11.io.ophiura:disk"
STATUS_VERSION = 1  # of `target show --json`; bumped only when a key changes meaning or goes


@dataclass(frozen=True)
class TargetConfig:
    """The command-line form: one backing file as LUN 0 of one target."""

    backing: Path
    size: int | None
    host: str = "127.0.0.1"
    port: int = 3260
    iqn: str = DEFAULT_IQN
    thin: bool = False
    chap: Credentials | None = None
    state_dir: Path | None = None
    block_size: int = 512
    nbd: tuple[str, int] | None = None  # also serve the backing file over NBD here
    nbd_export: str = "disk"
    nbd_security: NbdSecurity | None = None  # TLS, allow-list, connection cap (None: open)
    admin_socket: Path | None = None  # the status socket (`target show`); None: none
    admin_socket_explicit: bool = True  # False: best effort (the CLI's default path)

    def to_targets(self) -> TargetsConfig:
        lun = LunSpec(
            0,
            self.backing,
            self.size,
            self.block_size,
            self.thin,
            nbd_export=self.nbd_export if self.nbd is not None else None,
        )
        state_dir = self.state_dir or self.backing.with_name(self.backing.name + ".state")
        target = TargetSpec(self.iqn, (self.host, self.port), (lun,), state_dir, chap=self.chap)
        return TargetsConfig(
            (target,),
            self.nbd,
            self.admin_socket,
            admin_socket_explicit=self.admin_socket_explicit,
            nbd_security=self.nbd_security,
        )


class TargetDaemon:
    """Running targets; `start()` binds the portals, `stop()` undoes everything."""

    def __init__(self, config: TargetConfig | TargetsConfig) -> None:
        self.config = config
        self.spec = config if isinstance(config, TargetsConfig) else config.to_targets()
        self.portals: dict[tuple[str, int], Frontends] = {}
        for t in self.spec.targets:
            self.portals.setdefault(t.portal, Frontends(t.portal, None))
        self.nbd: Frontends | None = None
        if self.spec.nbd is not None:
            security = self.spec.nbd_security or NbdSecurity()
            self.nbd = Frontends(None, NbdListen(*self.spec.nbd, security))
        self.devices: dict[tuple[str, int], FileBlockDevice] = {}
        self.scsi: dict[str, ScsiTarget] = {}
        self.status: StatusSocket | None = None
        self.started_at: float | None = None
        self.sd = Notifier.from_environ()  # systemd Type=notify: READY=1 once serving

    @property
    def frontends(self) -> Frontends:
        """The portal of the first target (the only one in the command-line form)."""
        return self.portals[self.spec.targets[0].portal]

    def iscsi_port(self, iqn: str) -> int:
        """The TCP port the portal of target `iqn` listens on (the bound one when 0 was asked)."""
        spec = next(t for t in self.spec.targets if t.iqn == iqn)
        server = self.portals[spec.portal].iscsi
        assert server is not None, "not started"
        return server.port

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # no file or portal may outlive a failed start
            raise
        self.started_at = time.time()
        for t in self.spec.targets:
            listening = self.portals[t.portal].listening()["iscsi"]
            luns = ", ".join(
                f"LUN {lun.lun} {lun.backing} ({self.devices[(t.iqn, lun.lun)].size} bytes"
                f"{', thin' if lun.thin else ''}{', read-only' if lun.read_only else ''})"
                for lun in t.luns
            )
            log.info("serving %s on %s: %s", t.iqn, listening, luns)
        if self.nbd is not None:
            exports = sorted(self.nbd.exports)
            log.info("serving NBD exports %s on %s", exports, self.nbd.listening()["nbd"])
        self.sd.ready(f"serving {len(self.spec.targets)} target(s)")

    async def _start(self) -> None:
        for t in self.spec.targets:
            luns = {}
            for lun in t.luns:
                device = FileBlockDevice(
                    lun.backing,
                    lun.size,
                    block_size=lun.block_size,
                    thin=lun.thin,
                    read_only=lun.read_only,
                )
                self.devices[(t.iqn, lun.lun)] = device
                luns[lun.lun] = device
            scsi = ScsiTarget(t.iqn, luns, state_dir=t.state_dir)
            self.scsi[t.iqn] = scsi
            first = luns[t.luns[0].lun]
            self.portals[t.portal].add(
                Export(t.iqn, t.iqn, scsi, first, t.chap, initiators=t.initiators)
            )
            if self.nbd is not None:
                for lun in t.luns:
                    if lun.nbd_export is not None:
                        # The same device object behind both: NBD and iSCSI writes meet in one
                        # page cache and one flush.
                        device = luns[lun.lun]
                        self.nbd.add(Export(lun.nbd_export, t.iqn, scsi, device))
        for frontends in self.portals.values():
            await frontends.start()
        if self.nbd is not None:
            await self.nbd.start()
        if self.spec.admin_socket is not None:
            await self._start_status(self.spec.admin_socket)

    async def _start_status(self, path: Path) -> None:
        """A socket the operator asked for must work; the default one is best effort (several
        targets on one machine: the first takes it, the others say so and run without)."""
        status = StatusSocket(path, self.snapshot)
        try:
            if not self.spec.admin_socket_explicit:
                path.parent.mkdir(mode=0o755, exist_ok=True)
            await status.start()
        except OSError as exc:
            if self.spec.admin_socket_explicit:
                raise OSError(exc.errno, f"status socket {path}: {exc.strerror or exc}") from None
            log.warning(
                "no status socket (%s): `ophiura target show` cannot see this target; "
                "give --admin-socket or admin_socket",
                exc.strerror or exc,
            )
            return
        self.status = status

    async def stop(self) -> None:
        if self.status is not None:
            await self.status.stop()
            self.status = None
        for frontends in [*self.portals.values(), *([self.nbd] if self.nbd else [])]:
            await frontends.stop()
            for name in list(frontends.exports):
                frontends.remove(name)
        for (iqn, lun), device in list(self.devices.items()):
            try:
                await device.flush()
            except BlockDeviceError as exc:  # still close: the file descriptor must go
                log.error("final flush of %s LUN %d failed: %s", iqn, lun, exc)
            await device.close()
        self.devices.clear()
        self.scsi.clear()

    async def run_until_signalled(self) -> None:
        stop = stop_on_signals()
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            self.sd.stopping("stopping")
            await self.stop()

    # -- what `ophiura target show` prints --------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Targets, LUNs, sessions and reservations now: plain JSON, no secret in it."""
        nbd = None
        if self.nbd is not None:
            nbd = {
                "listen": self.nbd.listening()["nbd"],
                "exports": [
                    {"name": lun.nbd_export, "target": t.iqn, "lun": lun.lun}
                    for t in self.spec.targets
                    for lun in t.luns
                    if lun.nbd_export is not None
                ],
            }
        return {
            "version": STATUS_VERSION,
            "pid": os.getpid(),
            "since": _iso(self.started_at),
            "config": None if self.spec.source is None else str(self.spec.source),
            "targets": [self._target(t) for t in self.spec.targets],
            "nbd": nbd,
        }

    def _target(self, t: TargetSpec) -> dict[str, Any]:
        frontends = self.portals[t.portal]
        server = frontends.iscsi
        sessions = []
        if server is not None:
            for s in server.sessions.values():
                if s.target_name != t.iqn or s.discovery:
                    continue
                conn = s.connection
                sessions.append(
                    {
                        "initiator": s.initiator_name,
                        "isid": f"0x{s.isid:012x}",
                        "tsih": s.tsih,
                        "address": getattr(conn, "peer", None) if conn is not None else None,
                        "since": _iso(s.since),
                    }
                )
        sessions.sort(key=lambda s: (s["since"], s["initiator"], s["isid"]))
        chap = "off" if t.chap is None else "mutual" if t.chap.mutual_user else "on"
        return {
            "iqn": t.iqn,
            "alias": t.alias,
            "portal": frontends.listening()["iscsi"],
            "initiators": None if t.initiators is None else sorted(t.initiators),
            "chap": chap,
            "state_dir": str(t.state_dir),
            "luns": [self._lun(t, lun) for lun in t.luns],
            "sessions": sessions,
        }

    def _lun(self, t: TargetSpec, spec: LunSpec) -> dict[str, Any]:
        lu = self.scsi[t.iqn].logical_unit(spec.lun)
        pr = lu.pr
        holder: str | None = None
        if pr.res_type is not None:
            holder = "all-registrants" if pr.holder is None else pr.holder[0]
        return {
            "lun": spec.lun,
            "backing": str(spec.backing),
            "size": lu.num_blocks * lu.block_size,
            "block_size": lu.block_size,
            "thin": lu.thin,
            "read_only": spec.read_only,
            "nbd_export": spec.nbd_export,
            "serial": lu.serial,
            "naa": lu.naa.hex(),
            "reservation": {
                "generation": pr.generation,
                "aptpl": pr.aptpl,
                "registrations": [
                    {
                        "key": f"0x{r.key:x}",
                        "initiator_port": r.initiator_port,
                        "target_port": r.target_port,
                    }
                    for r in pr.registrations
                ],
                "type": type_name(None if pr.res_type is None else int(pr.res_type)),
                "holder": holder,
                "spc2_holder": None if lu.spc2_holder is None else lu.spc2_holder[0],
            },
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
