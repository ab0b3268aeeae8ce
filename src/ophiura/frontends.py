"""The iSCSI portal and the NBD server in front of a set of exports.

`ophiura target` (one file) and the host element (its replicated volumes) both put a device
behind an iSCSI target and an NBD export of their own; this is that wiring, once. An `Export`
names a device both ways (NBD name, iSCSI target name) together with its SCSI device server.
Exports can be added and removed while the servers run (the HE's volume admin): new logins
and connections see the change, sessions already open keep what they had until they end, and
the owner of a device closes it only after removing its export.

The NBD address may carry its access policy (`NbdListen`: TLS, an allow-list, a connection cap);
a plain (host, port) is an open listener, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ophiura.block.device import BlockDevice
from ophiura.iscsi.chap import Credentials
from ophiura.iscsi.server import IscsiServer
from ophiura.nbd.security import NbdListen, is_loopback
from ophiura.nbd.server import NbdServer
from ophiura.scsi.api import DeviceServer

log = logging.getLogger(__name__)

__all__ = ["Export", "Frontends", "NbdListen"]


@dataclass(frozen=True)
class Export:
    """One device as NBD export `name` and as LUN 0 of iSCSI target `iqn`."""

    name: str
    iqn: str
    scsi: DeviceServer
    device: BlockDevice
    chap: Credentials | None = None  # iSCSI CHAP for this target (none: open)
    initiators: frozenset[str] | None = None  # iSCSI ACL: who may log in (None: anyone)


class Frontends:
    """Starts, stops and feeds the iSCSI and NBD servers; either address may be None (off)."""

    def __init__(
        self,
        iscsi: tuple[str, int] | None = None,
        nbd: tuple[str, int] | NbdListen | None = None,
    ) -> None:
        self.iscsi_address = iscsi
        self.nbd_listen = nbd if nbd is None or isinstance(nbd, NbdListen) else NbdListen(*nbd)
        self.nbd_address = None if self.nbd_listen is None else self.nbd_listen.address
        self.exports: dict[str, Export] = {}
        self.iscsi: IscsiServer | None = None
        self.nbd: NbdServer | None = None

    @property
    def running(self) -> bool:
        return self.iscsi is not None or self.nbd is not None

    def add(self, export: Export) -> None:
        """Export a device (or replace the export of that name), also on running servers."""
        self.exports[export.name] = export
        if self.iscsi is not None:
            self.iscsi.add_target(
                export.iqn, export.scsi, export.chap, initiators=export.initiators
            )
            self._warn_iscsi()
        if self.nbd is not None:
            self.nbd.add_export(export.name, export.device)

    def remove(self, name: str) -> None:
        """Offer the export no more (a name that is not exported is ignored)."""
        export = self.exports.pop(name, None)
        if export is None:
            return
        if self.iscsi is not None:
            self.iscsi.remove_target(export.iqn)
        if self.nbd is not None:
            self.nbd.remove_export(export.name)

    async def start(self) -> None:
        """Bind the configured servers not yet running, serving every export added so far.

        A failure to bind stops what this call started, so no portal outlives a failed start.
        """
        started: list[IscsiServer | NbdServer] = []
        try:
            if self.iscsi_address is not None and self.iscsi is None:
                exports = self.exports.values()
                chap = {e.iqn: e.chap for e in exports if e.chap is not None}
                acls = {e.iqn: e.initiators for e in exports if e.initiators is not None}
                iscsi = IscsiServer(
                    {e.iqn: e.scsi for e in exports}, self.iscsi_address, chap, acls=acls
                )
                await iscsi.start()
                started.append(iscsi)
                self.iscsi = iscsi
                self._warn_iscsi()
            if self.nbd_listen is not None and self.nbd is None:
                listen = self.nbd_listen
                nbd = NbdServer(
                    {e.name: e.device for e in self.exports.values()},
                    listen.host,
                    listen.port,
                    security=listen.security,
                )
                await nbd.start()
                started.append(nbd)
                self.nbd = nbd
        except BaseException:
            for server in reversed(started):
                await server.stop()
                if server is self.iscsi:
                    self.iscsi = None
                if server is self.nbd:
                    self.nbd = None
            raise

    async def stop(self) -> None:
        """Stop both servers (sessions see a clean close); the exports stay registered."""
        if self.nbd is not None:
            await self.nbd.stop()
            self.nbd = None
        if self.iscsi is not None:
            await self.iscsi.stop()
            self.iscsi = None

    def warnings(self) -> list[str]:
        """What the running servers warn about (a listener beyond loopback that authenticates
        nobody), for a status display."""
        out = [self.nbd.warning] if self.nbd is not None and self.nbd.warning else []
        iscsi = self._iscsi_exposure()
        return [*out, iscsi] if iscsi else out

    def _iscsi_exposure(self) -> str | None:
        """A warning when the iSCSI portal is beyond loopback and some target there has neither
        CHAP nor an initiator ACL: anyone who reaches the port can read and write it."""
        if self.iscsi is None or self.iscsi_address is None or is_loopback(self.iscsi_address[0]):
            return None
        open_ = sorted(e.iqn for e in self.exports.values() if e.chap is None and not e.initiators)
        if not open_:
            return None
        host, port = self.iscsi_address[0], self.iscsi.port
        return (
            f"iSCSI portal {host}:{port} serves {', '.join(open_)} without CHAP or an initiator "
            "ACL: anyone who reaches it can read and write (set chap_file / initiator)"
        )

    def _warn_iscsi(self) -> None:
        warning = self._iscsi_exposure()
        if warning:
            log.warning("%s", warning)

    def listening(self) -> dict[str, str | None]:
        """`host:port` each server listens on (the bound port when 0 was asked), None if off."""
        return {
            "iscsi": None
            if self.iscsi is None or self.iscsi_address is None
            else f"{self.iscsi_address[0]}:{self.iscsi.port}",
            "nbd": None
            if self.nbd is None or self.nbd_address is None
            else f"{self.nbd_address[0]}:{self.nbd.port}",
        }
