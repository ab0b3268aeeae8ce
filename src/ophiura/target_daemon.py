"""`ophiura target`: one backing file served as LUN 0 of one iSCSI target until stopped
(and, with `--nbd`, as an NBD export too: the "direct" baseline for the StarFish benchmarks).

Assembles the three layers — a BlockDevice, the SCSI device server, the iSCSI portal — and owns
their lifetime: SIGTERM/SIGINT stop the portal (sessions see a clean close), flush the backing
file and exit 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ophiura.block.device import BlockDeviceError
from ophiura.block.file import FileBlockDevice
from ophiura.frontends import Export, Frontends, NbdListen
from ophiura.iscsi.chap import Credentials
from ophiura.nbd.security import NbdSecurity
from ophiura.scsi.target import ScsiTarget
from ophiura.serve import stop_on_signals

log = logging.getLogger(__name__)

DEFAULT_IQN = "iqn.2026-11.io.ophiura:disk"


@dataclass(frozen=True)
class TargetConfig:
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


class TargetDaemon:
    """A running target; `start()` binds the portal, `stop()` undoes everything."""

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.device: FileBlockDevice | None = None
        nbd = None
        if config.nbd is not None:
            nbd = NbdListen(*config.nbd, config.nbd_security or NbdSecurity())
        self.frontends = Frontends((config.host, config.port), nbd)

    async def start(self) -> None:
        cfg = self.config
        state_dir = cfg.state_dir or cfg.backing.with_name(cfg.backing.name + ".state")
        state_dir.mkdir(parents=True, exist_ok=True)
        self.device = FileBlockDevice(
            cfg.backing, cfg.size, block_size=cfg.block_size, thin=cfg.thin
        )
        scsi = ScsiTarget(cfg.iqn, {0: self.device}, state_dir=state_dir)
        # The same device object behind both: NBD and iSCSI writes meet in one page cache and
        # one flush.
        self.frontends.add(Export(cfg.nbd_export, cfg.iqn, scsi, self.device, cfg.chap))
        try:
            await self.frontends.start()
        except (OSError, ValueError):  # (ValueError: TLS certificates that do not load)
            await self.stop()  # the file must not outlive a failed start
            raise
        listening = self.frontends.listening()
        log.info(
            "serving %s (%d bytes%s) as %s on %s",
            cfg.backing,
            self.device.size,
            ", thin" if cfg.thin else "",
            cfg.iqn,
            listening["iscsi"],
        )
        if listening["nbd"] is not None:
            log.info(
                "serving %s as NBD export %r on %s", cfg.backing, cfg.nbd_export, listening["nbd"]
            )

    async def stop(self) -> None:
        await self.frontends.stop()
        self.frontends.remove(self.config.nbd_export)
        if self.device is not None:
            try:
                await self.device.flush()
            except BlockDeviceError as exc:  # still close: the file descriptor must go
                log.error("final flush of %s failed: %s", self.config.backing, exc)
            await self.device.close()
            self.device = None

    async def run_until_signalled(self) -> None:
        stop = stop_on_signals()
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            await self.stop()
