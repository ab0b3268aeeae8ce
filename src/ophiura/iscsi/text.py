"""iSCSI text keys: `key=value` NUL-separated parsing and the negotiation rules (RFC 7143 §6, §13).

The responder side (the target) computes every result here, from the kind of the key:
- list ("HeaderDigest=CRC32C,None"): the first offered value that we also accept;
- numerical min/max: the smaller/larger of offer and our value, within the key's range;
- boolean AND/OR: the RFC's function of offer and our value;
- declarative (MaxRecvDataSegmentLength, names): no result, each side states its own.
Unknown keys get `NotUnderstood`, bad values `Reject`, keys not meaningful for the session type
`Irrelevant`. Everything is bounded: a text body is at most `MAX_TEXT_BYTES`, a key name 63
characters, a value 8192 (RFC 7143 §6.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

MAX_TEXT_BYTES = 65536
MAX_KEY_LEN = 63
MAX_VALUE_LEN = 8192
MAX_KEYS = 256


class TextError(Exception):
    """A text segment that cannot be parsed (not UTF-8, no '=', duplicate key, too long)."""


def parse_text(
    data: bytes | bytearray | memoryview, allow_duplicates: bool = False
) -> list[tuple[str, str]]:
    """NUL-separated `key=value` pairs, in order; rejects duplicates (RFC 7143 §6.1) except
    where the RFC repeats keys on purpose (SendTargets answers: `allow_duplicates`)."""
    raw = bytes(data)
    if len(raw) > MAX_TEXT_BYTES:
        raise TextError(f"text segment of {len(raw)} bytes")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in raw.split(b"\0"):
        if not item:
            continue
        try:
            text = item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextError(f"text is not UTF-8: {exc}") from None
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise TextError(f"malformed text item {text[:80]!r}")
        if len(key) > MAX_KEY_LEN or len(value) > MAX_VALUE_LEN:
            raise TextError(f"key or value too long in {text[:80]!r}")
        if key in seen and not allow_duplicates:
            raise TextError(f"key {key} sent twice")
        seen.add(key)
        out.append((key, value))
        if len(out) > MAX_KEYS:
            raise TextError("too many keys")
    return out


def encode_text(pairs: list[tuple[str, str]] | dict[str, str]) -> bytes:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in items)


def parse_number(value: str) -> int:
    """Decimal or 0x-hex numbers (RFC 7143 §6.1 numerical values)."""
    v = value.strip()
    if v.lower().startswith("0x"):
        return int(v[2:], 16)
    if not v.isdigit():
        raise ValueError(f"not a number: {value!r}")
    return int(v)


LIST, MIN, MAX, AND, OR, DECLARATIVE = "list", "min", "max", "and", "or", "declarative"


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: str
    low: int = 0
    high: int = 0
    values: tuple[str, ...] = ()
    normal_only: bool = False  # Irrelevant in discovery sessions
    attr: str = ""  # SessionParams attribute the result goes to


KEYS: dict[str, KeySpec] = {
    s.name: s
    for s in (
        KeySpec("HeaderDigest", LIST, values=("None", "CRC32C"), attr="header_digest"),
        KeySpec("DataDigest", LIST, values=("None", "CRC32C"), attr="data_digest"),
        KeySpec("MaxConnections", MIN, 1, 65535, normal_only=True, attr="max_connections"),
        KeySpec("InitialR2T", OR, normal_only=True, attr="initial_r2t"),
        KeySpec("ImmediateData", AND, normal_only=True, attr="immediate_data"),
        KeySpec("MaxRecvDataSegmentLength", DECLARATIVE, 512, 2**24 - 1, attr="initiator_mrdsl"),
        KeySpec("MaxBurstLength", MIN, 512, 2**24 - 1, normal_only=True, attr="max_burst"),
        KeySpec("FirstBurstLength", MIN, 512, 2**24 - 1, normal_only=True, attr="first_burst"),
        KeySpec("DefaultTime2Wait", MAX, 0, 3600, attr="time2wait"),
        KeySpec("DefaultTime2Retain", MIN, 0, 3600, attr="time2retain"),
        KeySpec("MaxOutstandingR2T", MIN, 1, 65535, normal_only=True, attr="max_r2t"),
        KeySpec("DataPDUInOrder", OR, normal_only=True, attr="data_pdu_in_order"),
        KeySpec("DataSequenceInOrder", OR, normal_only=True, attr="data_sequence_in_order"),
        KeySpec("ErrorRecoveryLevel", MIN, 0, 2, attr="error_recovery_level"),
        KeySpec("IFMarker", AND),
        KeySpec("OFMarker", AND),
        KeySpec("RDMAExtensions", AND),
        KeySpec("TaskReporting", LIST, values=("RFC3720",)),
    )
}

# Keys the login layer itself handles (names, session type, security).
LOGIN_KEYS = frozenset(
    {
        "InitiatorName",
        "InitiatorAlias",
        "TargetName",
        "TargetAlias",
        "SessionType",
        "TargetAddress",
        "TargetPortalGroupTag",
        "AuthMethod",
        "CHAP_A",
        "CHAP_I",
        "CHAP_C",
        "CHAP_N",
        "CHAP_R",
        "SendTargets",
    }
)
IRRELEVANT_KEYS = frozenset({"IFMarkInt", "OFMarkInt"})


@dataclass
class SessionParams:
    """Negotiated operational parameters (RFC 7143 defaults until negotiated)."""

    header_digest: str = "None"
    data_digest: str = "None"
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    initiator_mrdsl: int = 8192  # what the initiator can receive (we send at most this)
    target_mrdsl: int = 8192  # what we declared we can receive
    max_burst: int = 262144
    first_burst: int = 65536
    time2wait: int = 2
    time2retain: int = 20
    max_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    negotiated: set[str] = field(default_factory=set)

    @property
    def digests(self) -> tuple[bool, bool]:
        """(header, data): whether each digest was negotiated to CRC32C."""
        return self.header_digest == "CRC32C", self.data_digest == "CRC32C"

    def copy(self) -> SessionParams:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["negotiated"] = set(self.negotiated)
        return SessionParams(**values)


@dataclass(frozen=True)
class TargetPolicy:
    """What the target is willing to do; the negotiation result never exceeds it."""

    header_digests: tuple[str, ...] = ("None", "CRC32C")
    data_digests: tuple[str, ...] = ("None", "CRC32C")
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 16 * 1024 * 1024
    first_burst_length: int = 262144
    max_outstanding_r2t: int = 16
    initial_r2t: bool = False
    immediate_data: bool = True
    default_time2wait: int = 2
    default_time2retain: int = 0
    error_recovery_level: int = 0


def _bool(value: str) -> bool:
    if value == "Yes":
        return True
    if value == "No":
        return False
    raise ValueError(value)


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


class Negotiator:
    """The responder side of operational negotiation: offers in, answers out, params updated."""

    def __init__(self, policy: TargetPolicy, discovery: bool = False) -> None:
        self.policy = policy
        self.discovery = discovery
        self.params = SessionParams(target_mrdsl=policy.max_recv_data_segment_length)
        self._ours: dict[str, object] = {
            "MaxConnections": 1,
            "InitialR2T": policy.initial_r2t,
            "ImmediateData": policy.immediate_data,
            "MaxBurstLength": policy.max_burst_length,
            "FirstBurstLength": policy.first_burst_length,
            "DefaultTime2Wait": policy.default_time2wait,
            "DefaultTime2Retain": policy.default_time2retain,
            "MaxOutstandingR2T": policy.max_outstanding_r2t,
            "DataPDUInOrder": True,
            "DataSequenceInOrder": True,
            "ErrorRecoveryLevel": policy.error_recovery_level,
            "IFMarker": False,
            "OFMarker": False,
            "RDMAExtensions": False,
        }
        self._declared_mrdsl = False

    def respond(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Answer every operational key offered; login/security keys are skipped here."""
        out: list[tuple[str, str]] = []
        for key, value in pairs:
            if key in LOGIN_KEYS:
                continue
            answer = self._answer(key, value)
            if answer is not None:
                out.append((key, answer))
        if not self._declared_mrdsl:
            # Declarative: tell the initiator what we can receive, once.
            out.append(("MaxRecvDataSegmentLength", str(self.params.target_mrdsl)))
            self._declared_mrdsl = True
        return out

    def finish(self) -> SessionParams:
        p = self.params
        if p.first_burst > p.max_burst:
            p.first_burst = p.max_burst
        return p

    def _answer(self, key: str, value: str) -> str | None:
        if key in IRRELEVANT_KEYS:
            return "Irrelevant"
        spec = KEYS.get(key)
        if spec is None:
            return "NotUnderstood"
        if value in ("NotUnderstood", "Irrelevant", "Reject"):
            return None  # an answer, not an offer: nothing to say back
        p = self.params
        try:
            if spec.kind == LIST:
                offered = [v.strip() for v in value.split(",")]
                if key == "HeaderDigest":
                    ours: tuple[str, ...] = self.policy.header_digests
                elif key == "DataDigest":
                    ours = self.policy.data_digests
                else:
                    ours = spec.values
                for v in offered:
                    if v in ours:
                        if spec.attr:
                            setattr(p, spec.attr, v)
                        p.negotiated.add(key)
                        return v
                return "Reject"
            if spec.kind == DECLARATIVE:
                n = parse_number(value)
                if not spec.low <= n <= spec.high:
                    return "Reject"
                setattr(p, spec.attr, n)
                p.negotiated.add(key)
                if key == "MaxRecvDataSegmentLength":
                    self._declared_mrdsl = True
                    return str(p.target_mrdsl)
                return None
            if spec.normal_only and self.discovery:
                return "Irrelevant"
            if spec.kind in (MIN, MAX):
                n = parse_number(value)
                if not spec.low <= n <= spec.high:
                    return "Reject"
                mine = int(self._ours[key])  # type: ignore[call-overload]
                result = min(n, mine) if spec.kind == MIN else max(n, mine)
                if spec.attr:
                    setattr(p, spec.attr, result)
                p.negotiated.add(key)
                return str(result)
            # boolean
            b = _bool(value)
            mine_b = bool(self._ours[key])
            result_b = (b and mine_b) if spec.kind == AND else (b or mine_b)
            if spec.attr:
                setattr(p, spec.attr, result_b)
            p.negotiated.add(key)
            return _yes(result_b)
        except ValueError:
            return "Reject"


def apply_response(params: SessionParams, pairs: list[tuple[str, str]]) -> SessionParams:
    """Initiator side: take the target's answers into our parameters."""
    for key, value in pairs:
        if value in ("NotUnderstood", "Irrelevant", "Reject"):
            continue
        if key == "MaxRecvDataSegmentLength":
            try:
                params.target_mrdsl = parse_number(value)
            except ValueError:
                continue
            continue
        spec = KEYS.get(key)
        if spec is None or not spec.attr:
            continue
        try:
            if spec.kind == LIST:
                setattr(params, spec.attr, value)
            elif spec.kind in (MIN, MAX):
                setattr(params, spec.attr, parse_number(value))
            elif spec.kind in (AND, OR):
                setattr(params, spec.attr, _bool(value))
        except ValueError:
            continue
        params.negotiated.add(key)
    return params
