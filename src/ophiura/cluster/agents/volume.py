"""`volume`: a shared iSCSI LUN held with a SCSI-3 persistent reservation — the own-able resource.

Bottomley's resource-driven recovery needs one resource per hierarchy that only one node can
hold; a PR on the shared LUN is the classic one. Taking it over from a dead (or rogue) node is
PREEMPT AND ABORT of that node's key: its registration is gone, its queued commands aborted, and
its next write meets RESERVATION CONFLICT, however long it was frozen.

Params: `url` (required, `iscsi://[user@]host[:port]/target-iqn/lun`; a `user%secret@` in it
works but is discouraged, and is never shown: messages carry the URL with `***`), `chap_file`
(CHAP and mutual CHAP credentials from a file only root can read, `ophiura.iscsi.chap_file`:
the way to give the secret), `node` (this
node's name, default the host name), `key` (this node's reservation key, hex, default derived
from `node`), `initiator` (iSCSI name, default `iqn.2026-11.io.ophiura:cluster.<node>`),
`type` (PR type, default `write-exclusive`; any `ophiura pr` type name), `aptpl` (registrations
survive a target power loss, default no), `preempt` (`abort` (default) or `plain`: PREEMPT
without ABORT), `unregister` (drop our key on stop, default yes).

The I_T nexus is (initiator name, ISID) and the ISID is fixed by the initiator name
(`pr_tool.stable_isid`), so every action's short session is the same nexus, as a long-lived
kernel session would be. fence_scsi's pain (a new session id silently loses the key) is handled
by looking, not assuming: monitor reads the full status and requires our key registered *for this
nexus* and the reservation held by it; if our key is only registered on another nexus of ours
(the ISID changed) it re-registers here and moves the reservation with a self-PREEMPT.

- start: register (REGISTER AND IGNORE EXISTING KEY), then: no reservation -> RESERVE; ours ->
  done; another key holds it -> PREEMPT AND ABORT that key. Verified by a read back.
- monitor: ours -> SUCCESS; preempted (another key holds it, or our key is gone while a
  reservation exists) -> ERR_GENERIC "preempted": the node must stop its hierarchy at once
  (self-fence); nothing of ours and no reservation -> NOT_RUNNING; target unreachable ->
  ERR_GENERIC.
- stop: RELEASE if we hold it, unregister; not holding it is SUCCESS (stop is idempotent).
A node's own data path must log in with the same initiator name and ISID (or, with a
registrants-only type, register this key on its own nexus) for the reservation to cover it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import ParamError, Params, config_error, done
from ophiura.iscsi import pr_client as pr
from ophiura.iscsi.chap import Credentials
from ophiura.iscsi.chap_file import ChapFileError, load_chap_file
from ophiura.iscsi.initiator import IscsiError, IscsiInitiator, ScsiResult, parse_url
from ophiura.iscsi.url import redact
from ophiura.pr_tool import TYPE_NAMES, stable_isid
from ophiura.scsi.api import Status

PREEMPTED = "preempted"  # a monitor reason starting so: another node took the reservation
UA_NAMES = {
    (0x2A, 0x03): "reservations preempted",
    (0x2A, 0x04): "reservations released",
    (0x2A, 0x05): "registrations preempted",
}


def derive_key(node: str) -> int:
    """A non-zero 64-bit reservation key fixed by the node name."""
    digest = hashlib.sha256(b"ophiura-cluster-node:" + node.encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def default_initiator(node: str) -> str:
    return f"iqn.2026-11.io.ophiura:cluster.{node.lower()}"


class VolumeError(Exception):
    """A reservation step was refused; the message says which and how."""


@dataclass(frozen=True)
class VolumeSpec:
    url: str = field(repr=False)  # may hold a CHAP secret: shown only through `redact`
    node: str
    key: int
    chap: Credentials | None = field(repr=False)
    initiator: str
    isid: int
    pr_type: int
    aptpl: bool
    abort: bool
    unregister: bool

    @property
    def nexus(self) -> str:
        return f"{self.initiator},i,0x{self.isid:012x}"

    @classmethod
    def of(cls, resource: Resource) -> VolumeSpec:
        p = Params(resource)
        url = p.text("url")
        try:
            parse_url(url)
        except ValueError as exc:
            raise ParamError(resource.name, "url", str(exc)) from None
        chap = None
        chap_path = p.opt("chap_file")
        if chap_path:
            try:
                chap = load_chap_file(Path(chap_path))
            except ChapFileError as exc:
                raise ParamError(resource.name, "chap_file", str(exc)) from None
        node = p.text("node", socket.gethostname())
        key_text = p.opt("key")
        if key_text:
            try:
                key = int(key_text, 16)
            except ValueError:
                raise ParamError(resource.name, "key", f"is not hex: {key_text!r}") from None
            if not 0 < key < 1 << 64:
                raise ParamError(resource.name, "key", "must be a non-zero 64-bit value")
        else:
            key = derive_key(node)
        initiator = p.text("initiator", default_initiator(node))
        type_name = p.text("type", "write-exclusive")
        if type_name not in TYPE_NAMES:
            raise ParamError(resource.name, "type", f"unknown PR type {type_name!r}")
        return cls(
            url=url,
            node=node,
            key=key,
            chap=chap,
            initiator=initiator,
            isid=stable_isid(initiator),
            pr_type=TYPE_NAMES[type_name],
            aptpl=p.flag("aptpl", False),
            abort=p.choice("preempt", ("abort", "plain"), "abort") == "abort",
            unregister=p.flag("unregister", True),
        )


@dataclass
class PrView:
    """What the LUN says: who is registered (and on which nexus), who holds the reservation."""

    ours_here: bool  # our key registered on this nexus
    ours_elsewhere: bool  # our key registered on another nexus only
    holder_key: int | None
    holder_nexus: str | None
    holder_type: int | None
    unit_attentions: list[str]

    def held_by_us(self, spec: VolumeSpec) -> bool:
        return self.holder_key == spec.key and _same(self.holder_nexus, spec.nexus)


def _same(a: str | None, b: str) -> bool:
    return a is not None and a.lower() == b.lower()


def _failed(what: str, r: ScsiResult) -> VolumeError:
    if r.status == Status.RESERVATION_CONFLICT:
        return VolumeError(f"{what}: RESERVATION CONFLICT")
    return VolumeError(f"{what}: SCSI status 0x{r.status:02x} sense {r.sense_key} {r.asc_ascq}")


class _Session:
    """One short iSCSI session as this node's nexus."""

    def __init__(self, spec: VolumeSpec, timeout: float) -> None:
        self.spec = spec
        self.timeout = timeout
        self.ini: IscsiInitiator | None = None
        self.lun = 0
        self.uas: list[str] = []

    async def __aenter__(self) -> _Session:
        auth: dict[str, Any] = {}
        if (chap := self.spec.chap) is not None:
            auth["chap"] = (chap.user, chap.secret)
            if chap.mutual_user and chap.mutual_secret:
                auth["mutual"] = (chap.mutual_user, chap.mutual_secret)
        self.ini, self.lun = await IscsiInitiator.from_url(
            self.spec.url, self.spec.initiator, isid=self.spec.isid, timeout=self.timeout, **auth
        )
        # The first commands of a nexus meet unit attentions (power on, preempted...): read them.
        for _ in range(8):
            r = await self.ini.test_unit_ready(self.lun)
            if r.status != Status.CHECK_CONDITION or r.sense_key != 6:
                break
            asc = r.asc_ascq
            if asc is not None:
                self.uas.append(UA_NAMES.get(asc, f"unit attention {asc[0]:02x}/{asc[1]:02x}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ini is not None:
            await self.ini.logout()

    async def out(self, what: str, sa: int, **kw: object) -> None:
        assert self.ini is not None
        r = await self.ini.persistent_reserve_out(sa, lun=self.lun, **kw)  # type: ignore[arg-type]
        if not r.ok:
            raise _failed(what, r)

    async def view(self) -> PrView:
        assert self.ini is not None
        full = await self.ini.persistent_reserve_in(pr.PrIn.READ_FULL_STATUS, self.lun)
        here = elsewhere = False
        holder_key = holder_nexus = holder_type = None
        for e in full.entries:
            if e.key == self.spec.key:
                if _same(e.initiator, self.spec.nexus):
                    here = True
                else:
                    elsewhere = True
            if e.holder and holder_key is None:
                holder_key, holder_nexus, holder_type = e.key, e.initiator, e.type
        if holder_key is None:
            # all-registrants types have no single holder entry: ask READ RESERVATION
            res = await self.ini.persistent_reserve_in(pr.PrIn.READ_RESERVATION, self.lun)
            if res.key is not None:
                holder_key, holder_type = res.key, res.type
                if res.type in (
                    pr.PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
                    pr.PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
                ):
                    holder_key = self.spec.key if here else res.key
                    holder_nexus = self.spec.nexus if here else None
        return PrView(here, elsewhere or False, holder_key, holder_nexus, holder_type, self.uas)


class VolumeAgent:
    async def _guard(self, resource: Resource, timeout: float, body) -> Outcome:  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        try:
            spec = VolumeSpec.of(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        try:
            async with asyncio.timeout(timeout):
                async with _Session(spec, timeout) as s:
                    code, reason = await body(spec, s)
            return done(code, t0, reason)
        except TimeoutError:
            return Outcome(
                OcfCode.ERR_GENERIC,
                time.monotonic() - t0,
                timed_out=True,
                reason=f"{redact(spec.url)}: no answer within {timeout:g}s",
            )
        except VolumeError as exc:
            return done(OcfCode.ERR_GENERIC, t0, str(exc))
        except (IscsiError, OSError) as exc:
            return done(OcfCode.ERR_GENERIC, t0, f"{redact(spec.url)}: {exc}")

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        async def body(spec: VolumeSpec, s: _Session) -> tuple[OcfCode, str]:
            await s.out(
                "REGISTER",
                pr.PrOut.REGISTER_AND_IGNORE_EXISTING_KEY,
                sa_key=spec.key,
                aptpl=spec.aptpl,
            )
            v = await s.view()
            note = ""
            if v.held_by_us(spec):
                return OcfCode.SUCCESS, "already held"
            if v.holder_key is None:
                await s.out("RESERVE", pr.PrOut.RESERVE, key=spec.key, pr_type=spec.pr_type)
            else:
                # Another node's key (or our own key on a stale nexus): take it over.
                sa = pr.PrOut.PREEMPT_AND_ABORT if spec.abort else pr.PrOut.PREEMPT
                verb = "PREEMPT AND ABORT" if spec.abort else "PREEMPT"
                await s.out(verb, sa, key=spec.key, sa_key=v.holder_key, pr_type=spec.pr_type)
                note = f"{verb} of key 0x{v.holder_key:x}"
            v = await s.view()
            if not v.held_by_us(spec):
                held = "nobody" if v.holder_key is None else f"key 0x{v.holder_key:x}"
                return OcfCode.ERR_GENERIC, f"reservation not ours after acquiring: {held}"
            return OcfCode.SUCCESS, note

        return await self._guard(resource, timeout, body)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        async def body(spec: VolumeSpec, s: _Session) -> tuple[OcfCode, str]:
            v = await s.view()
            if v.held_by_us(spec) and v.ours_here:
                return OcfCode.SUCCESS, ""
            if v.holder_key == spec.key and v.ours_elsewhere:
                # fence_scsi's pain: our nexus changed. Register here, move the reservation.
                await s.out(
                    "REGISTER",
                    pr.PrOut.REGISTER_AND_IGNORE_EXISTING_KEY,
                    sa_key=spec.key,
                    aptpl=spec.aptpl,
                )
                await s.out(
                    "PREEMPT (own key)",
                    pr.PrOut.PREEMPT,
                    key=spec.key,
                    sa_key=spec.key,
                    pr_type=spec.pr_type,
                )
                if (await s.view()).held_by_us(spec):
                    return OcfCode.SUCCESS, f"re-registered key 0x{spec.key:x} on {spec.nexus}"
                return OcfCode.ERR_GENERIC, "lost the reservation while moving it to this nexus"
            uas = f" ({', '.join(v.unit_attentions)})" if v.unit_attentions else ""
            if v.holder_key is not None and v.holder_key != spec.key:
                return (
                    OcfCode.ERR_GENERIC,
                    f"{PREEMPTED}: reservation held by key 0x{v.holder_key:x}{uas}; fenced",
                )
            if v.holder_key is not None:
                return OcfCode.ERR_GENERIC, f"our key holds the reservation on another nexus{uas}"
            if v.ours_here or v.ours_elsewhere:
                return OcfCode.ERR_GENERIC, f"registered but the reservation is gone{uas}"
            if any("preempted" in u for u in v.unit_attentions):
                return OcfCode.ERR_GENERIC, f"{PREEMPTED}{uas}; fenced"
            return OcfCode.NOT_RUNNING, ""

        out = await self._guard(resource, timeout, body)
        if out.code == OcfCode.ERR_GENERIC and out.reason.startswith(PREEMPTED):
            out = dataclasses.replace(out, taken=True)  # another key holds it: taken, not broken
        return out

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        async def body(spec: VolumeSpec, s: _Session) -> tuple[OcfCode, str]:
            v = await s.view()
            notes = []
            if v.held_by_us(spec) and v.holder_type is not None:
                await s.out("RELEASE", pr.PrOut.RELEASE, key=spec.key, pr_type=v.holder_type)
                notes.append("released")
            if spec.unregister and v.ours_here:
                await s.out("unregister", pr.PrOut.REGISTER, key=spec.key, sa_key=0)
                notes.append("unregistered")
            return OcfCode.SUCCESS, ", ".join(notes)

        return await self._guard(resource, timeout, body)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            VolumeSpec.of(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        return done(OcfCode.SUCCESS, t0)
