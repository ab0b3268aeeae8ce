"""HE configuration: the same keys from command-line flags or a TOML file (identical on every HE).

TOML example (docs/replication.md has the full list):

    quorum = 2
    se = ["a=127.0.0.1:7001", "b=127.0.0.1:7002,delay=1", "c=127.0.0.1:7003,delay=8,rate=51"]
    volume = ["db:1G", "logs:256M"]
    iscsi = "127.0.0.1:3260"
    nbd = "127.0.0.1:10809"
    tls_certificates = "/etc/ophiura/pki"     # NBD over TLS (ca-cert.pem, server-*.pem)
    nbd_allow = ["10.0.0.0/8"]                # NBD clients from these addresses only
    chap_file = "/etc/ophiura/volumes.chap"   # iSCSI CHAP (iscsi/chap_file.py), chmod 600
    initiator = ["iqn.2026-11.io.example:n1", "db=iqn.2026-11.io.example:n2"]  # iSCSI ACL
    control = "127.0.0.1:7600"
    cache = "64M"
    queue = "64M"
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ophiura.iscsi.chap import Credentials
from ophiura.iscsi.chap_file import ChapFileError, load_chap_file
from ophiura.metrics_http import MetricsListenError, check_listen
from ophiura.nbd.security import NbdListen, NbdSecurity, NbdSecurityError
from ophiura.replication.he.se_session import SeSpec
from ophiura.sizes import parse_size

DEFAULT_CONTROL = ("127.0.0.1", 7600)
DEFAULT_IQN_PREFIX = "iqn.2026-11.org.ophiura:"
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class ConfigError(ValueError):
    """A configuration value is malformed; the message names the key and the bad value."""


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_se(text: str) -> SeSpec:
    """NAME=HOST:PORT[,delay=MS][,rate=MBIT]."""
    head, *opts = [p.strip() for p in text.split(",")]
    name, sep, addr = head.partition("=")
    if not sep or not name:
        raise ConfigError(f"--se: {text!r} is not NAME=HOST:PORT[,delay=MS][,rate=MBIT]")
    host, port = parse_host_port(addr, f"--se {name}")
    delay, rate = 0.0, None
    for opt in opts:
        key, sep, value = opt.partition("=")
        try:
            if key == "delay" and sep:
                delay = float(value)
            elif key == "rate" and sep:
                rate = float(value)
            else:
                raise ConfigError(f"--se {name}: unknown option {opt!r} (delay=MS, rate=MBIT)")
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"--se {name}: {opt!r} is not a number") from exc
    if delay < 0 or (rate is not None and rate <= 0):
        raise ConfigError(f"--se {name}: delay must be >= 0 and rate > 0")
    return SeSpec(name, host, port, delay, rate)


def check_volume_name(name: str) -> str:
    if not _VOLUME_NAME.match(name):
        raise ConfigError(
            f"volume name {name!r}: use 1-63 letters, digits, '-' or '_' (starting alphanumeric)"
        )
    return name


def parse_volume(text: str) -> tuple[str, int]:
    name, sep, size = text.partition(":")
    if not sep:
        raise ConfigError(f"--volume: {text!r} is not NAME:SIZE")
    try:
        nbytes = parse_size(size)
    except ValueError as exc:
        raise ConfigError(f"--volume {name}: {exc}") from exc
    if nbytes <= 0 or nbytes % 4096:
        raise ConfigError(f"--volume {name}: size {nbytes} must be a positive multiple of 4096")
    return check_volume_name(name), nbytes


@dataclass(frozen=True)
class HeConfig:
    ses: tuple[SeSpec, ...]
    quorum: int
    volumes: tuple[tuple[str, int], ...] = ()
    iscsi: tuple[str, int] | None = None
    nbd: tuple[str, int] | NbdListen | None = None  # NbdListen: with TLS / allow-list / cap
    control: tuple[str, int] = DEFAULT_CONTROL
    cache_bytes: int = 64 << 20
    queue_bytes: int = 64 << 20
    secret_file: Path | None = None
    standby: bool = False
    iqn_prefix: str = DEFAULT_IQN_PREFIX
    state_dir: Path | None = None  # where the SCSI layer's state files live (restored here)
    block_size: int = 512
    evict_wait: float = 0.5
    metrics: tuple[str, int] | None = None  # GET /metrics here (metrics_http.py); off if None
    metrics_token_file: Path | None = None  # required unless `metrics` is a loopback address
    # iSCSI access: CHAP initiators must pass (and mutual CHAP we answer), from `chap_file`
    chap: Credentials | None = field(default=None, repr=False)
    # iSCSI ACL entries (volume or None for every volume, initiator IQN); none: anyone
    initiators: tuple[tuple[str | None, str], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [s.name for s in self.ses]
        if not names:
            raise ConfigError("at least one --se is needed")
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate SE names in {names}")
        if not 1 <= self.quorum <= len(names):
            raise ConfigError(f"--quorum {self.quorum} must be between 1 and {len(names)}")
        vnames = [v for v, _ in self.volumes]
        if len(set(vnames)) != len(vnames):
            raise ConfigError(f"duplicate volume names in {vnames}")
        if self.queue_bytes < (1 << 20):
            raise ConfigError(f"--queue {self.queue_bytes} is below 1M")
        if self.cache_bytes < 0:
            raise ConfigError("--cache must be >= 0")
        if self.metrics is not None:
            try:
                check_listen(self.metrics[0], self.metrics_token_file)
            except MetricsListenError as exc:
                raise ConfigError(str(exc)) from None

    def iqn(self, volume: str) -> str:
        return f"{self.iqn_prefix}{volume}"

    def acl(self, volume: str) -> frozenset[str] | None:
        """Initiators that may log in to `volume`'s target; None: any (no ACL given)."""
        if not self.initiators:
            return None
        return frozenset(iqn for v, iqn in self.initiators if v is None or v == volume)

    def with_overrides(self, **changes: Any) -> HeConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_KEYS = {
    "se",
    "quorum",
    "volume",
    "iscsi",
    "nbd",
    "control",
    "cache",
    "queue",
    "secret_file",
    "standby",
    "iqn_prefix",
    "state_dir",
    "block_size",
    "evict_wait",
    "metrics",
    "metrics_token_file",
    # NBD access (nbd/security.py): only with `nbd`
    "tls_certificates",
    "tls",
    "tls_verify_peer",
    "nbd_allow",
    "nbd_max_connections",
    # iSCSI access (iscsi/chap_file.py, the login ACL)
    "chap_file",
    "initiator",
}
_NBD_SECURITY_KEYS = ("tls_certificates", "tls", "tls_verify_peer", "nbd_allow")


def build_config(values: dict[str, Any]) -> HeConfig:
    """From flag-shaped values (strings as on the command line); TOML uses the same keys."""
    unknown = set(values) - _KEYS - {k.replace("_", "-") for k in _KEYS}
    if unknown:
        raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
    v = {k.replace("-", "_"): val for k, val in values.items()}
    ses = _strings(v, "se", SeSpec)
    volumes = _strings(v, "volume", tuple)
    if "quorum" not in v:
        raise ConfigError("--quorum is required")
    for key in ("secret_file", "state_dir", "iqn_prefix", "metrics_token_file", "chap_file"):
        if v.get(key) is not None and not isinstance(v[key], (str, Path)):
            raise ConfigError(f"{key}: {v[key]!r} is not a string")
    if v.get("standby") is not None and not isinstance(v["standby"], bool):
        raise ConfigError(f"standby: {v['standby']!r} is not true or false")

    def addr(key: str) -> tuple[str, int] | None:
        val = v.get(key)
        if val is None or isinstance(val, tuple):
            return val
        return parse_host_port(str(val), f"--{key}")

    def size(key: str, default: int) -> int:
        val = v.get(key)
        if val is None:
            return default
        try:
            return parse_size(val)
        except ValueError as exc:
            raise ConfigError(f"--{key}: {exc}") from exc

    return HeConfig(
        ses=tuple(s if isinstance(s, SeSpec) else parse_se(str(s)) for s in ses),
        quorum=_number(v, "quorum", int, 0),
        volumes=tuple(x if isinstance(x, tuple) else parse_volume(str(x)) for x in volumes),
        iscsi=addr("iscsi"),
        nbd=_nbd(v, addr("nbd")),
        control=addr("control") or DEFAULT_CONTROL,
        cache_bytes=size("cache", 64 << 20),
        queue_bytes=size("queue", 64 << 20),
        secret_file=Path(v["secret_file"]) if v.get("secret_file") else None,
        standby=bool(v.get("standby", False)),
        iqn_prefix=str(v.get("iqn_prefix") or DEFAULT_IQN_PREFIX),
        state_dir=Path(v["state_dir"]) if v.get("state_dir") else None,
        block_size=_number(v, "block_size", int, 512),
        evict_wait=_number(v, "evict_wait", float, 0.5),
        metrics=addr("metrics"),
        metrics_token_file=Path(v["metrics_token_file"]) if v.get("metrics_token_file") else None,
        chap=_chap(v.get("chap_file")),
        initiators=tuple(_initiator(str(x)) for x in _strings(v, "initiator", str)),
    )


def _chap(path: str | Path | None) -> Credentials | None:
    if path is None:
        return None
    try:
        return load_chap_file(Path(path))
    except ChapFileError as exc:
        raise ConfigError(f"chap_file: {exc}") from None


def _initiator(text: str) -> tuple[str | None, str]:
    """`[VOLUME=]IQN`: an initiator allowed to log in to VOLUME's target (or to every one)."""
    volume, sep, iqn = text.rpartition("=")
    if sep and not volume:
        raise ConfigError(f"initiator: {text!r} is not [VOLUME=]IQN")
    if not re.fullmatch(
        r"(iqn\.\d{4}-\d{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})", iqn
    ):
        raise ConfigError(f"initiator: {iqn!r} is not an iSCSI name (iqn.YYYY-MM.domain:...)")
    return (check_volume_name(volume) if sep else None), iqn.lower()


def _nbd(v: dict[str, Any], address: tuple[str, int] | None) -> NbdListen | None:
    """The NBD listener with its access policy (TLS, allow-list, cap), checked here; the
    certificates themselves load when the server starts (and `ophiura he` checks them first)."""
    given = [k for k in (*_NBD_SECURITY_KEYS, "nbd_max_connections") if v.get(k) is not None]
    if address is None:
        if given:
            raise ConfigError(f"{', '.join(given)}: NBD options need nbd = HOST:PORT")
        return None
    for key in ("tls_certificates", "tls"):
        if v.get(key) is not None and not isinstance(v[key], (str, Path)):
            raise ConfigError(f"{key}: {v[key]!r} is not a string")
    verify = v.get("tls_verify_peer")
    if verify is not None and not isinstance(verify, bool):
        raise ConfigError(f"tls_verify_peer: {verify!r} is not true or false")
    cap = v.get("nbd_max_connections")
    try:
        security = NbdSecurity.from_options(
            tls=v.get("tls"),
            certificates=v.get("tls_certificates"),
            verify_peer=bool(verify),
            allow=_strings(v, "nbd_allow", str),
            max_connections=None if cap is None else _number(v, "nbd_max_connections", int, 0),
        )
    except NbdSecurityError as exc:
        raise ConfigError(str(exc)) from None
    return NbdListen(*address, security)


def _strings(v: dict[str, Any], key: str, parsed: type) -> list[Any]:
    """A key that takes one string or a list of them (already parsed values pass)."""
    val = v.get(key) or []
    if isinstance(val, str):
        return [val]
    if not isinstance(val, (list, tuple)) or not all(isinstance(x, (str, parsed)) for x in val):
        raise ConfigError(f"{key}: {val!r} is not a string or a list of strings")
    return list(val)


def _number(v: dict[str, Any], key: str, kind: type[Any], default: Any) -> Any:
    """An int or float key, given as a number or a numeric string, else a ConfigError."""
    val = v.get(key, default)
    what = "an integer" if kind is int else "a number"
    if isinstance(val, bool) or not isinstance(val, (int, float, str)):
        raise ConfigError(f"{key}: {val!r} is not {what}")
    try:
        return kind(val)
    except ValueError:
        raise ConfigError(f"{key}: {val!r} is not {what}") from None


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    section = data.get("he", data)  # a cluster-wide file may nest the HE keys under [he]
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [he] is not a table")
    return dict(section)
