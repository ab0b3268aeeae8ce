"""The target's login state machine (RFC 7143 §6.3, §11.12-13), sans-I/O and table driven.

Everything that changes the login phase lives here. A Login Request is classified into an event
from its CSG, NSG and T bit; `TRANSITIONS[state][event]` says which state handles it, and an
event without an entry is a protocol error: the target answers with a Login Response carrying a
status class and detail, and the connection is closed. The machine never touches a socket: the
connection feeds it `LoginRequest`s and sends the `LoginReply`s it returns.

    START ──sec*──> SECURITY ──(auth ok, T=1, NSG=op)──> SECURITY_DONE ──op*──> OPERATIONAL
      │                 └──────(auth ok, T=1, NSG=ff)──────────────────────────> FULL_FEATURE
      └──op*──> OPERATIONAL ──(T=1, NSG=ff)──> FULL_FEATURE
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ophiura.iscsi import chap
from ophiura.iscsi.chap import Credentials
from ophiura.iscsi.text import (
    MAX_TEXT_BYTES,
    Negotiator,
    SessionParams,
    TargetPolicy,
    TextError,
    parse_text,
)

log = logging.getLogger(__name__)

SECURITY_STAGE, OPERATIONAL_STAGE, FULL_FEATURE_STAGE = 0, 1, 3


class LoginState(Enum):
    START = "start"
    SECURITY = "security"
    SECURITY_DONE = "security-done"  # target agreed to leave security for operational
    OPERATIONAL = "operational"
    FULL_FEATURE = "full-feature"
    FAILED = "failed"


class LoginEvent(Enum):
    SEC = "sec"  # CSG=security, T=0
    SEC_TO_OP = "sec->op"
    SEC_TO_FF = "sec->ff"
    OP = "op"  # CSG=operational, T=0
    OP_TO_FF = "op->ff"
    INVALID = "invalid"  # reserved stage values, backwards transitions


S, E = LoginState, LoginEvent
TRANSITIONS: dict[LoginState, dict[LoginEvent, LoginState]] = {
    S.START: {
        E.SEC: S.SECURITY,
        E.SEC_TO_OP: S.SECURITY,
        E.SEC_TO_FF: S.SECURITY,
        E.OP: S.OPERATIONAL,
        E.OP_TO_FF: S.OPERATIONAL,
    },
    S.SECURITY: {E.SEC: S.SECURITY, E.SEC_TO_OP: S.SECURITY, E.SEC_TO_FF: S.SECURITY},
    S.SECURITY_DONE: {E.OP: S.OPERATIONAL, E.OP_TO_FF: S.OPERATIONAL},
    S.OPERATIONAL: {E.OP: S.OPERATIONAL, E.OP_TO_FF: S.OPERATIONAL},
    S.FULL_FEATURE: {},
    S.FAILED: {},
}


class Status:
    """Login status class/detail, as one 16-bit value (class << 8 | detail)."""

    SUCCESS = 0x0000
    INITIATOR_ERROR = 0x0200
    AUTH_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE = 0x0208
    SESSION_TYPE_UNSUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302


@dataclass(frozen=True)
class TargetInfo:
    """What the login needs to know about one target name."""

    name: str
    tpgt: int = 1
    alias: str | None = None
    chap: Credentials | None = None
    initiators: frozenset[str] | None = None  # the ACL: who may log in (None: anyone)

    def admits(self, initiator_name: str) -> bool:
        """iSCSI names compare case-insensitively (RFC 3722 folds them to lower case)."""
        if self.initiators is None:
            return True
        return initiator_name.lower() in {n.lower() for n in self.initiators}


@dataclass(frozen=True)
class LoginRequest:
    transit: bool
    cont: bool
    csg: int
    nsg: int
    version_max: int
    version_min: int
    isid: int
    tsih: int
    cid: int
    itt: int
    cmdsn: int
    expstatsn: int
    text: bytes


@dataclass
class LoginReply:
    transit: bool
    csg: int
    nsg: int
    status: int = Status.SUCCESS
    pairs: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False  # the login is done: full feature phase after this reply
    failed: bool = False  # close the connection after this reply

    @property
    def flags(self) -> int:
        return (0x80 if self.transit else 0) | (self.csg << 2) | self.nsg


class LoginError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def classify(req: LoginRequest) -> LoginEvent:
    if req.csg == SECURITY_STAGE:
        if not req.transit:
            return E.SEC
        return {OPERATIONAL_STAGE: E.SEC_TO_OP, FULL_FEATURE_STAGE: E.SEC_TO_FF}.get(
            req.nsg, E.INVALID
        )
    if req.csg == OPERATIONAL_STAGE:
        if not req.transit:
            return E.OP
        return E.OP_TO_FF if req.nsg == FULL_FEATURE_STAGE else E.INVALID
    return E.INVALID


class ChallengeRegistry:
    """Challenges seen recently (ours and the initiators'), to refuse reflection and replay."""

    def __init__(self, size: int = 4096) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._size = size

    def add(self, challenge: bytes) -> bool:
        """Record; False if it was already there."""
        if challenge in self._seen:
            return False
        self._seen[challenge] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


class ChapState(Enum):
    NONE = "none"
    WAIT_ALGORITHM = "wait-algorithm"
    WAIT_RESPONSE = "wait-response"
    DONE = "done"


class LoginMachine:
    """One connection's login. `targets` maps IQN -> TargetInfo."""

    def __init__(
        self,
        targets: Mapping[str, TargetInfo],
        policy: TargetPolicy | None = None,
        discovery_chap: Credentials | None = None,
        challenges: ChallengeRegistry | None = None,
        peer: str = "?",
    ) -> None:
        self.targets = targets
        self.policy = policy or TargetPolicy()
        self.discovery_chap = discovery_chap
        self.challenges = challenges or ChallengeRegistry()
        self.peer = peer
        self.state = LoginState.START
        self.initiator_name: str | None = None
        self.initiator_alias: str | None = None
        self.session_type = "Normal"
        self.target: TargetInfo | None = None
        self.isid: int | None = None
        self.tsih = 0
        self.cid = 0
        self.negotiator: Negotiator | None = None
        self.params: SessionParams | None = None
        self._auth_done = False
        self._chap_state = ChapState.NONE
        self._chap_id = 0
        self._chap_challenge = b""
        self._partial = b""
        self._first_reply = True

    @property
    def discovery(self) -> bool:
        return self.session_type == "Discovery"

    @property
    def credentials(self) -> Credentials | None:
        if self.discovery:
            return self.discovery_chap
        return self.target.chap if self.target else None

    # ------------------------------------------------------------------------------------
    def receive(self, req: LoginRequest) -> LoginReply:
        """Handle one Login Request; never raises (errors become failed replies)."""
        try:
            return self._receive(req)
        except LoginError as exc:
            log.warning("login from %s refused (0x%04x): %s", self.peer, exc.status, exc)
            self.state = LoginState.FAILED
            return LoginReply(False, req.csg & 3, 0, exc.status, failed=True)

    def _receive(self, req: LoginRequest) -> LoginReply:
        event = classify(req)
        new_state = TRANSITIONS[self.state].get(event)
        if new_state is None:
            raise LoginError(
                Status.INITIATOR_ERROR, f"login event {event.value} in state {self.state.value}"
            )
        if self.isid is None:
            self.isid, self.tsih, self.cid = req.isid, req.tsih, req.cid
            if req.version_min > 0:
                raise LoginError(Status.UNSUPPORTED_VERSION, f"VersionMin {req.version_min}")
        elif (req.isid, req.tsih) != (self.isid, self.tsih):
            raise LoginError(Status.INITIATOR_ERROR, "ISID/TSIH changed during login")
        self.state = new_state
        if len(self._partial) + len(req.text) > MAX_TEXT_BYTES:
            raise LoginError(Status.OUT_OF_RESOURCES, "login text too long")
        if req.cont:
            # Text continues in the next PDU: acknowledge with an empty response (§6.1.1).
            self._partial += req.text
            return LoginReply(False, req.csg, req.nsg)
        text, self._partial = self._partial + req.text, b""
        try:
            pairs = parse_text(text)
        except TextError as exc:
            raise LoginError(Status.INITIATOR_ERROR, str(exc)) from None
        keys = dict(pairs)
        if self._first_reply:
            self._identify(keys)
        out: list[tuple[str, str]] = []
        if self._first_reply and not self.discovery and self.target is not None:
            out.append(("TargetPortalGroupTag", str(self.target.tpgt)))
            if self.target.alias:
                out.append(("TargetAlias", self.target.alias))
        self._first_reply = False
        assert self.negotiator is not None
        if self.state is LoginState.SECURITY:
            out += self._security(keys)
            out += self.negotiator.respond(pairs) if _has_operational(pairs) else []
            if req.transit and self._auth_done:
                if req.nsg == FULL_FEATURE_STAGE:
                    return self._complete(req, out)
                self.state = LoginState.SECURITY_DONE
                return LoginReply(True, req.csg, req.nsg, pairs=out)
            return LoginReply(False, req.csg, req.nsg if req.transit else 0, pairs=out)
        # operational stage
        if self.credentials is not None and not self._auth_done:
            raise LoginError(Status.AUTH_FAILURE, "authentication required, none performed")
        if any(k.startswith("CHAP_") or k == "AuthMethod" for k in keys):
            raise LoginError(Status.INITIATOR_ERROR, "security keys in the operational stage")
        out += self.negotiator.respond(pairs)
        if req.transit:
            return self._complete(req, out)
        return LoginReply(False, req.csg, 0, pairs=out)

    def _complete(self, req: LoginRequest, out: list[tuple[str, str]]) -> LoginReply:
        assert self.negotiator is not None
        self.params = self.negotiator.finish()
        self.state = LoginState.FULL_FEATURE
        return LoginReply(True, req.csg, FULL_FEATURE_STAGE, pairs=out, complete=True)

    def _identify(self, keys: dict[str, str]) -> None:
        name = keys.get("InitiatorName")
        if not name:
            raise LoginError(Status.MISSING_PARAMETER, "no InitiatorName")
        self.initiator_name = name
        self.initiator_alias = keys.get("InitiatorAlias")
        session_type = keys.get("SessionType", "Normal")
        if session_type not in ("Normal", "Discovery"):
            raise LoginError(Status.SESSION_TYPE_UNSUPPORTED, f"SessionType={session_type}")
        self.session_type = session_type
        if session_type == "Normal":
            target_name = keys.get("TargetName")
            if not target_name:
                raise LoginError(Status.MISSING_PARAMETER, "no TargetName in a normal session")
            target = self.targets.get(target_name)
            if target is None:
                raise LoginError(Status.NOT_FOUND, f"unknown TargetName {target_name}")
            if not target.admits(name):
                # Refused before any authentication: an ACL is not a secret (LIO does the same).
                raise LoginError(
                    Status.AUTHORIZATION_FAILURE,
                    f"initiator {name} is not in the ACL of {target_name}",
                )
            self.target = target
        self.negotiator = Negotiator(self.policy, discovery=self.discovery)
        if self.credentials is None:
            self._auth_done = True  # until the initiator offers AuthMethod: None is implied

    def _security(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        creds = self.credentials
        out: list[tuple[str, str]] = []
        if "AuthMethod" in keys:
            if self._chap_state is not ChapState.NONE:
                raise LoginError(Status.INITIATOR_ERROR, "AuthMethod offered twice")
            methods = [m.strip() for m in keys["AuthMethod"].split(",")]
            if creds is None:
                if "None" not in methods:
                    raise LoginError(Status.AUTH_FAILURE, f"AuthMethod={keys['AuthMethod']}")
                out.append(("AuthMethod", "None"))
                self._auth_done = True
                return out
            if "CHAP" not in methods:
                raise LoginError(Status.AUTH_FAILURE, "CHAP required but not offered")
            out.append(("AuthMethod", "CHAP"))
            self._auth_done = False
            self._chap_state = ChapState.WAIT_ALGORITHM
            return out
        if creds is None:
            return out
        if self._chap_state is ChapState.NONE:
            raise LoginError(Status.AUTH_FAILURE, "CHAP required, no AuthMethod offered")
        if self._chap_state is ChapState.WAIT_ALGORITHM:
            algorithms = [a.strip() for a in keys.get("CHAP_A", "").split(",")]
            if str(chap.CHAP_MD5) not in algorithms:
                raise LoginError(Status.AUTH_FAILURE, f"CHAP_A={keys.get('CHAP_A')}")
            self._chap_id, self._chap_challenge = chap.new_challenge()
            while not self.challenges.add(self._chap_challenge):
                self._chap_id, self._chap_challenge = chap.new_challenge()
            self._chap_state = ChapState.WAIT_RESPONSE
            out += [
                ("CHAP_A", str(chap.CHAP_MD5)),
                ("CHAP_I", str(self._chap_id)),
                ("CHAP_C", chap.encode_hex(self._chap_challenge)),
            ]
            return out
        if self._chap_state is ChapState.WAIT_RESPONSE:
            return out + self._check_chap_response(creds, keys)
        return out  # DONE: nothing more to say about security

    def _check_chap_response(
        self, creds: Credentials, keys: dict[str, str]
    ) -> list[tuple[str, str]]:
        user, response = keys.get("CHAP_N"), keys.get("CHAP_R")
        if user is None or response is None:
            raise LoginError(Status.AUTH_FAILURE, "CHAP_N/CHAP_R missing")
        try:
            got = chap.decode_binary(response)
        except chap.ChapError as exc:
            raise LoginError(Status.AUTH_FAILURE, f"CHAP_R: {exc}") from None
        if user != creds.user or not chap.verify(
            self._chap_id, creds.secret, self._chap_challenge, got
        ):
            raise LoginError(
                Status.AUTH_FAILURE,
                f"CHAP authentication failed for user {user!r} (initiator {self.initiator_name})",
            )
        self._chap_state = ChapState.DONE
        out: list[tuple[str, str]] = []
        if "CHAP_I" in keys or "CHAP_C" in keys:
            if creds.mutual_secret is None or creds.mutual_user is None:
                raise LoginError(Status.AUTH_FAILURE, "mutual CHAP asked, none configured")
            try:
                ident = int(keys.get("CHAP_I", ""))
                challenge = chap.decode_binary(keys.get("CHAP_C", ""))
            except (ValueError, chap.ChapError) as exc:
                raise LoginError(Status.AUTH_FAILURE, f"mutual CHAP_I/C: {exc}") from None
            if not 0 <= ident <= 255 or not 1 <= len(challenge) <= chap.MAX_CHALLENGE_LEN:
                raise LoginError(Status.AUTH_FAILURE, "mutual CHAP_I/CHAP_C out of range")
            if challenge == self._chap_challenge or not self.challenges.add(challenge):
                raise LoginError(Status.AUTH_FAILURE, "mutual CHAP challenge replayed")
            rsp = chap.chap_response(ident, creds.mutual_secret, challenge)
            out += [("CHAP_N", creds.mutual_user), ("CHAP_R", chap.encode_hex(rsp))]
        self._auth_done = True
        return out


def _has_operational(pairs: list[tuple[str, str]]) -> bool:
    return any(not (k.startswith("CHAP_") or k in _IDENT_KEYS) for k, _ in pairs)


_IDENT_KEYS = frozenset(
    {"AuthMethod", "InitiatorName", "InitiatorAlias", "TargetName", "SessionType"}
)


def login_request_from_pdu(pdu: object) -> LoginRequest:
    """Build a LoginRequest from a decoded `Pdu` (typed loosely to keep this module pure)."""
    flags = pdu.flags  # type: ignore[attr-defined]
    return LoginRequest(
        transit=bool(flags & 0x80),
        cont=bool(flags & 0x40),
        csg=(flags >> 2) & 3,
        nsg=flags & 3,
        version_max=pdu.b2 >> 8,  # type: ignore[attr-defined]
        version_min=pdu.b2 & 0xFF,  # type: ignore[attr-defined]
        isid=pdu.isid,  # type: ignore[attr-defined]
        tsih=pdu.tsih,  # type: ignore[attr-defined]
        cid=pdu.cid,  # type: ignore[attr-defined]
        itt=pdu.itt,  # type: ignore[attr-defined]
        cmdsn=pdu.cmdsn,  # type: ignore[attr-defined]
        expstatsn=pdu.expstatsn,  # type: ignore[attr-defined]
        text=bytes(pdu.data),  # type: ignore[attr-defined]
    )
