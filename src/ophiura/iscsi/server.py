"""The iSCSI target server: a listening portal, the targets behind it, and its sessions.

    server = IscsiServer({"iqn.2025-01.org.ophiura:disk0": scsi_target}, ("127.0.0.1", 0))
    await server.start(); print(server.port); ...; await server.stop()

Sessions are keyed by (InitiatorName, ISID, TargetName): a new login with the same key and
TSIH 0 reinstates the session (the old one ends, which is an I_T nexus loss for the device
server, then the new nexus is added).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from ophiura.iscsi.chap import Credentials
from ophiura.iscsi.connection import IscsiConnection
from ophiura.iscsi.login import (
    ChallengeRegistry,
    LoginError,
    LoginMachine,
    LoginRequest,
    Status,
    TargetInfo,
)
from ophiura.iscsi.session import Session, make_nexus
from ophiura.iscsi.text import TargetPolicy
from ophiura.scsi.api import DeviceServer

log = logging.getLogger(__name__)


class IscsiServer:
    def __init__(
        self,
        device_servers: Mapping[str, DeviceServer],
        portal: tuple[str, int] = ("127.0.0.1", 3260),
        chap: Mapping[str, Credentials] | None = None,
        *,
        tpgt: int = 1,
        aliases: Mapping[str, str] | None = None,
        policy: TargetPolicy | None = None,
        discovery_chap: Credentials | None = None,
        nop_interval: float | None = 30.0,
        nop_timeout: float = 15.0,
        login_timeout: float = 15.0,
        queue_depth: int = 128,
        max_edtl: int = 64 * 1024 * 1024,
        write_budget: int = 64 * 1024 * 1024,
        max_immediate: int = 16,
        unsolicited_budget: int = 32 * 1024 * 1024,
        max_sessions: int = 1024,
        tmf_wait: float = 10.0,
        advertise: str | None = None,
        acls: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """`acls` maps a target name to the initiator names that may log in to it (a target
        without an entry admits any initiator); discovery lists only admitted targets."""
        self.device_servers = dict(device_servers)
        self.portal = portal
        self.tpgt = tpgt
        chap = chap or {}
        aliases = aliases or {}
        acls = acls or {}
        unknown = (set(chap) | set(acls)) - set(self.device_servers)
        if unknown:
            raise ValueError(f"CHAP or ACL configured for unknown targets: {sorted(unknown)}")
        self.target_infos = {
            name: TargetInfo(name, tpgt, aliases.get(name), chap.get(name), acls.get(name))
            for name in self.device_servers
        }
        self.policy = policy or TargetPolicy()
        self.discovery_chap = discovery_chap
        self.challenges = ChallengeRegistry()
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self.login_timeout = login_timeout
        self.queue_depth = queue_depth
        self.max_edtl = max_edtl
        self.write_budget = write_budget
        # Immediate SCSI commands bypass the CmdSN window (RFC 7143 §4.2.2.1), so the window does
        # not bound them: at most `max_immediate` may be outstanding per connection (one session:
        # MaxConnections=1); the next gets a Reject "Immediate command reject" (§11.17.1).
        # Unsolicited write data (immediate data + unsolicited Data-Out) cannot be paced by R2Ts:
        # a connection holds at most `unsolicited_budget` bytes of it for unfinished tasks; a
        # command that would exceed it is refused (immediate: Reject; in the window: TASK SET
        # FULL, which initiators retry). Defaults: 128 window slots x 256 KiB fit the budget.
        if max_immediate < 1:
            raise ValueError("max_immediate must be at least 1 (RFC 7143 §4.2.2.1)")
        self.max_immediate = max_immediate
        self.unsolicited_budget = unsolicited_budget
        self.counters: collections.Counter[str] = collections.Counter()  # refusals, by kind
        self.max_sessions = max_sessions
        self.tmf_wait = tmf_wait
        self.advertise = advertise
        self.sessions: dict[tuple[str, int, str | None], Session] = {}
        self._by_tsih: dict[int, Session] = {}
        self._connections: set[IscsiConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._next_tsih = secrets.randbelow(0xFFF0) + 1

    # ---- targets -------------------------------------------------------------------------
    def add_target(
        self,
        name: str,
        device_server: DeviceServer,
        chap: Credentials | None = None,
        alias: str | None = None,
        initiators: frozenset[str] | None = None,
    ) -> None:
        """Serve one more target (or replace one): logins and discovery from now on see it.
        `initiators` is its ACL (None: any initiator)."""
        self.device_servers[name] = device_server
        self.target_infos[name] = TargetInfo(name, self.tpgt, alias, chap, initiators)

    def remove_target(self, name: str) -> None:
        """Offer a target no more to new logins and discovery; sessions already logged in keep
        their device server until they end (their owner decides when to close the device)."""
        self.device_servers.pop(name, None)
        self.target_infos.pop(name, None)

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.portal
        self._server = await loop.create_server(
            lambda: IscsiConnection(self), host, port, reuse_address=True, backlog=128
        )
        log.info(
            "iSCSI target listening on %s:%d (%s)", host, self.port, ", ".join(self.device_servers)
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    def buffered_write_bytes(self) -> int:
        """Write data held right now for tasks on every connection (received, not yet done),
        plus PDU bytes read but not yet decoded: what an initiator can make us hold."""
        return sum(conn.held_bytes() for conn in self._connections)

    @property
    def address(self) -> tuple[str, int]:
        return (self.portal[0], self.port)

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        pending = [fut for conn in list(self._connections) for fut in conn.running()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for fut in still:
                fut.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> IscsiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- sessions ------------------------------------------------------------------------
    def initial_statsn(self) -> int:
        return secrets.randbelow(0xFFFFFFFF)

    def _alloc_tsih(self) -> int:
        for _ in range(0x10000):
            tsih = self._next_tsih
            self._next_tsih = self._next_tsih % 0xFFFF + 1
            if tsih not in self._by_tsih:
                return tsih
        raise LoginError(Status.OUT_OF_RESOURCES, "no free TSIH")

    def _establish(
        self, machine: LoginMachine, conn: IscsiConnection, req: LoginRequest
    ) -> Session:
        """Called when a login completes: create (or reinstate) the session."""
        assert machine.initiator_name is not None and machine.params is not None
        target_name = machine.target.name if machine.target else None
        key = (machine.initiator_name, req.isid, target_name)
        old = self.sessions.get(key)
        if req.tsih:
            if old is None or old.tsih != req.tsih:
                raise LoginError(Status.SESSION_DOES_NOT_EXIST, f"no session TSIH {req.tsih}")
        elif old is None and len(self.sessions) >= self.max_sessions:
            raise LoginError(Status.OUT_OF_RESOURCES, "too many sessions")
        if old is not None:
            log.info("reinstating session %s (tsih %d)", key, old.tsih)
            old_conn = old.connection
            if old_conn is not None and not old_conn.closed:
                old_conn.abort()  # ends the old session: nexus loss reported there
            self._drop_session(old)
        tsih = req.tsih or self._alloc_tsih()
        session = Session(
            tsih=tsih,
            isid=req.isid,
            initiator_name=machine.initiator_name,
            target_name=target_name,
            tpgt=self.tpgt,
            discovery=machine.discovery,
            params=machine.params,
            connection=conn,
        )
        if target_name is not None:
            session.device_server = self.device_servers[target_name]
            session.nexus = make_nexus(machine.initiator_name, req.isid, target_name, self.tpgt)
        self.sessions[key] = session
        self._by_tsih[tsih] = session
        if session.nexus is not None and session.device_server is not None:
            session.device_server.nexus_added(session.nexus)
        return session

    def _drop_session(self, session: Session) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        if self._by_tsih.get(session.tsih) is session:
            del self._by_tsih[session.tsih]

    def _session_closed(self, session: Session, conn: IscsiConnection) -> None:
        """The session's only connection ended (logout or loss): I_T nexus loss."""
        if session.connection is not conn:
            return
        session.connection = None
        self._drop_session(session)
        if session.nexus is not None and session.device_server is not None:
            try:
                session.device_server.nexus_lost(session.nexus)
            except Exception:
                log.exception("nexus_lost failed for %s", session.nexus)

    # ---- discovery -----------------------------------------------------------------------
    def send_targets(self, value: str, session: Session, conn: IscsiConnection) -> list[Any]:
        if session.discovery:
            if value == "All":
                names = list(self.device_servers)
            else:
                names = [value] if value in self.device_servers else []
            # An initiator outside a target's ACL does not learn that the target exists.
            names = [
                n
                for n in names
                if n in self.target_infos and self.target_infos[n].admits(session.initiator_name)
            ]
        else:
            names = [session.target_name] if value in ("", session.target_name) else []
        host = self.advertise or self.portal[0]
        if host in ("0.0.0.0", "::", "") and conn.transport is not None:
            host = conn.transport.get_extra_info("sockname")[0]
        if ":" in host:
            host = f"[{host}]"
        out: list[tuple[str, str]] = []
        for name in names:
            out.append(("TargetName", name))
            out.append(("TargetAddress", f"{host}:{self.port},{self.tpgt}"))
        return out
