"""`ophiura target --config FILE.toml`: several iSCSI targets, their LUNs, ACLs and CHAP.

What `saveconfig.json` is to LIO and `targets.conf` to tgt, as a TOML file validated in one
pass: every problem is reported at once, each as one line naming its key path
(`targets[1].luns[0].backing: ...`), never as a traceback. Validation only reads: it opens the
CHAP secret files, looks at the backing files' parent directories (a missing one is an error,
never created: a typo would go unnoticed) and at the file's own permissions (an inline secret in
a file that group or others can read is refused). Relative paths are relative to the file.

    admin_socket = "/run/ophiura/target.sock"   # where `ophiura target show` asks
    [nbd]
    listen = "127.0.0.1:10809"
    [[targets]]
    iqn = "iqn.2026-11.io.example:db"
    listen = "127.0.0.1:3260"
    initiators = ["iqn.2026-11.io.example:node1"]      # absent: any initiator
    chap = { user = "db", secret_file = "db.chap" }
    [[targets.luns]]
    backing = "db0.img"
    size = "10G"
    nbd_export = "db0"

examples/target.toml is the complete, tested example; docs/target.md lists every key.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophiura.iscsi.chap import Credentials
from ophiura.nbd.security import NbdSecurity
from ophiura.sizes import parse_size

DEFAULT_ADMIN_SOCKET = Path("/run/ophiura/target.sock")
DEFAULT_PORTAL = ("127.0.0.1", 3260)
MIN_CHAP_SECRET = 12  # RFC 7143 §12.1.3: at least 96 bits of secret
MAX_CHAP_SECRET = 255
MAX_LUN = 16383  # the flat/peripheral LUN addressing REPORT LUNS encodes
# iqn.YYYY-MM.reversed.domain[:anything] or eui.16HEX or naa.16/32HEX (RFC 3720 §3.2.6.3)
_NAME = re.compile(
    r"^(iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[^\s]+)?"
    r"|eui\.[0-9A-Fa-f]{16}|naa\.(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32}))$"
)
_EXPORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TargetConfigError(ValueError):
    """The file is not a valid target configuration; `problems` holds one line per problem."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("\n".join(f"{path}: {p}" for p in problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True)
class LunSpec:
    lun: int
    backing: Path
    size: int | None  # None: the existing file's size
    block_size: int = 512
    thin: bool = False
    read_only: bool = False
    nbd_export: str | None = None  # also served over NBD under this name


@dataclass(frozen=True)
class TargetSpec:
    iqn: str
    portal: tuple[str, int]
    luns: tuple[LunSpec, ...]
    state_dir: Path
    initiators: frozenset[str] | None = None  # the ACL; None: any initiator may log in
    chap: Credentials | None = None
    alias: str | None = None

    def __repr__(self) -> str:  # never a secret in a log line or a traceback
        chap = "off" if self.chap is None else "mutual" if self.chap.mutual_user else "on"
        return f"TargetSpec({self.iqn!r}, {self.portal}, luns={len(self.luns)}, chap={chap})"


@dataclass(frozen=True)
class TargetsConfig:
    targets: tuple[TargetSpec, ...]
    nbd: tuple[str, int] | None = None
    admin_socket: Path | None = DEFAULT_ADMIN_SOCKET  # None: no status socket
    source: Path | None = None
    admin_socket_explicit: bool = False  # asked for: failing to bind it is fatal
    nbd_security: NbdSecurity | None = None  # TLS, allow-list, connection cap (None: open)


def is_iscsi_name(name: str) -> bool:
    return bool(_NAME.match(name)) and len(name.encode()) <= 223


def parse_portal(text: str) -> tuple[str, int]:
    """HOST:PORT ([v6]:PORT too); ValueError with the expected form."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (example: 127.0.0.1:3260)")
    return host.strip("[]"), int(port)


class _Checker:
    """Walks the parsed TOML, collecting problems with their key paths instead of raising."""

    def __init__(self, base: Path, file_shared: bool) -> None:
        self.base = base
        self.file_shared = file_shared  # group or others may read the file
        self.problems: list[str] = []

    def bad(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.bad(key, f"must be a table, not {_kind(value)}")
            return None
        for k in sorted(set(value) - allowed):
            self.bad(_join(key, k), f"unknown key (known: {', '.join(sorted(allowed))})")
        return value

    def get(
        self,
        t: dict[str, Any],
        key: str,
        name: str,
        kind: type | tuple[type, ...],
        required: bool = False,
    ) -> Any:
        path = _join(key, name)
        if name not in t:
            if required:
                self.bad(path, "required")
            return None
        value = t[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int to Python, never to a config file
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            self.bad(path, f"must be {want}, not {_kind(value)}")
            return None
        return value

    def convert(self, path: str, value: Any, fn: Callable[[Any], Any]) -> Any:
        if value is None:
            return None
        try:
            return fn(value)
        except ValueError as exc:
            self.bad(path, str(exc))
            return None

    def path(self, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base / p

    # -- sections ----------------------------------------------------------------------------
    def config(self, doc: dict[str, Any], source: Path) -> TargetsConfig | None:
        self.table(doc, "", {"admin_socket", "nbd", "targets"})
        admin: Path | None = DEFAULT_ADMIN_SOCKET
        if "admin_socket" in doc:
            text = self.get(doc, "", "admin_socket", str)
            admin = None if text in (None, "") else self.path(text)
            if admin is not None and not admin.parent.is_dir():
                self.bad("admin_socket", f"{admin.parent} is not a directory")
        nbd = None
        if "nbd" in doc:
            t = self.table(doc["nbd"], "nbd", {"listen"})
            if t is not None:
                nbd = self.convert(
                    "nbd.listen", self.get(t, "nbd", "listen", str, required=True), parse_portal
                )
        raw = doc.get("targets")
        targets: list[TargetSpec] = []
        if raw is None:
            self.bad("targets", "required: at least one [[targets]] table")
        elif not isinstance(raw, list) or not raw:
            self.bad("targets", "must be a non-empty array of tables ([[targets]])")
        else:
            for i, t in enumerate(raw):
                spec = self.target(t, f"targets[{i}]")
                if spec is not None:
                    targets.append(spec)
        self.across(targets, nbd)
        if self.problems:
            return None
        return TargetsConfig(tuple(targets), nbd, admin, source, "admin_socket" in doc)

    def target(self, raw: Any, key: str) -> TargetSpec | None:
        allowed = {"iqn", "listen", "alias", "state_dir", "initiators", "chap", "luns"}
        t = self.table(raw, key, allowed)
        if t is None:
            return None
        before = len(self.problems)
        iqn = self.get(t, key, "iqn", str, required=True)
        if iqn is not None and not is_iscsi_name(iqn):
            self.bad(_join(key, "iqn"), f"{iqn!r} is not an iSCSI name (iqn.YYYY-MM.domain:id)")
        portal = self.convert(_join(key, "listen"), self.get(t, key, "listen", str), parse_portal)
        alias = self.get(t, key, "alias", str)
        initiators = self.initiators(t, key)
        chap = self.chap(t["chap"], _join(key, "chap")) if "chap" in t else None
        luns: list[LunSpec] = []
        raw_luns = t.get("luns")
        if raw_luns is None:
            self.bad(_join(key, "luns"), "required: at least one [[targets.luns]] table")
        elif not isinstance(raw_luns, list) or not raw_luns:
            self.bad(_join(key, "luns"), "must be a non-empty array of tables")
        else:
            for j, lun_raw in enumerate(raw_luns):
                lun = self.lun(lun_raw, f"{key}.luns[{j}]", j)
                if lun is not None:
                    luns.append(lun)
            seen: dict[int, int] = {}
            for j, lun in enumerate(luns):
                if lun.lun in seen:
                    self.bad(f"{key}.luns[{j}].lun", f"LUN {lun.lun} is also luns[{seen[lun.lun]}]")
                seen.setdefault(lun.lun, j)
        state_text = self.get(t, key, "state_dir", str)
        state_dir = None
        if state_text is not None:
            state_dir = self.path(state_text)
            if not state_dir.parent.is_dir():
                self.bad(_join(key, "state_dir"), f"{state_dir.parent} is not a directory")
        elif luns:
            first = min(luns, key=lambda lun: lun.lun).backing
            state_dir = first.with_name(first.name + ".state")  # as `--backing` alone does
        if len(self.problems) > before or iqn is None or state_dir is None:
            return None
        return TargetSpec(
            iqn=iqn,
            portal=portal or DEFAULT_PORTAL,
            luns=tuple(sorted(luns, key=lambda lun: lun.lun)),
            state_dir=state_dir,
            initiators=initiators,
            chap=chap,
            alias=alias,
        )

    def initiators(self, t: dict[str, Any], key: str) -> frozenset[str] | None:
        raw = self.get(t, key, "initiators", list)
        if raw is None:
            return None
        names: list[str] = []
        for i, name in enumerate(raw):
            if not isinstance(name, str) or not is_iscsi_name(name):
                self.bad(f"{key}.initiators[{i}]", f"{name!r} is not an iSCSI name")
            else:
                names.append(name)
        if not raw:
            self.bad(_join(key, "initiators"), "empty: no initiator could log in (omit the key "
                     "to allow any)")  # fmt: skip
        return frozenset(names)

    def chap(self, raw: Any, key: str) -> Credentials | None:
        allowed = {
            "user", "secret", "secret_file", "mutual_user", "mutual_secret", "mutual_secret_file"
        }  # fmt: skip
        t = self.table(raw, key, allowed)
        if t is None:
            return None
        user = self.get(t, key, "user", str, required=True)
        secret = self.secret(t, key, "secret", required=True)
        mutual_user = self.get(t, key, "mutual_user", str)
        mutual = self.secret(t, key, "mutual_secret", required=mutual_user is not None)
        if mutual is not None and mutual_user is None:
            self.bad(_join(key, "mutual_user"), "required with a mutual secret")
        if mutual is not None and mutual == secret:
            self.bad(key, "the mutual secret must differ from the initiator's (RFC 7143 §12.1.3)")
        if user is None or secret is None:
            return None
        return Credentials(user, secret, mutual_user, mutual)

    def secret(self, t: dict[str, Any], key: str, name: str, required: bool) -> str | None:
        """An inline secret (only in a file nobody else can read) or a `<name>_file`."""
        inline, file_key = name in t, f"{name}_file"
        if inline and file_key in t:
            self.bad(_join(key, name), f"give {name} or {file_key}, not both")
            return None
        if inline:
            value = self.get(t, key, name, str)
            if value is not None and self.file_shared:
                self.bad(
                    _join(key, name),
                    "inline secret in a file group or others can read: chmod 600 the file "
                    f"or use {file_key}",
                )
                return None
        elif file_key in t:
            text = self.get(t, key, file_key, str)
            value = None if text is None else self.read_secret(_join(key, file_key), text)
        else:
            if required:
                self.bad(_join(key, file_key), f"required (or {name}, in a file only you can read)")
            return None
        if value is not None and not MIN_CHAP_SECRET <= len(value.encode()) <= MAX_CHAP_SECRET:
            self.bad(
                _join(key, name if inline else file_key),
                f"the secret is {len(value.encode())} bytes; CHAP needs "
                f"{MIN_CHAP_SECRET}-{MAX_CHAP_SECRET} (RFC 7143: at least 96 bits)",
            )
            return None
        return value

    def read_secret(self, key: str, text: str) -> str | None:
        path = self.path(text)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.bad(key, f"cannot open {path}: {exc.strerror or exc}")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.bad(key, f"{path} is not a regular file")
                return None
            if st.st_mode & 0o077:
                self.bad(
                    key,
                    f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others can read "
                    f"it (chmod 600 {path})",
                )
                return None
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        try:
            return data.decode().strip()
        except UnicodeDecodeError:
            self.bad(key, f"{path} is not UTF-8 text")
            return None

    def lun(self, raw: Any, key: str, index: int) -> LunSpec | None:
        allowed = {"lun", "backing", "size", "block_size", "thin", "read_only", "nbd_export"}
        t = self.table(raw, key, allowed)
        if t is None:
            return None
        before = len(self.problems)
        number = self.get(t, key, "lun", int)
        if number is None and "lun" not in t:
            number = index
        elif number is not None and not 0 <= number <= MAX_LUN:
            self.bad(_join(key, "lun"), f"{number} is not 0-{MAX_LUN}")
        backing_text = self.get(t, key, "backing", str, required=True)
        size = self.convert(_join(key, "size"), self.get(t, key, "size", (str, int)), parse_size)
        block_size = self.get(t, key, "block_size", int)
        if block_size is not None and block_size not in (512, 4096):
            self.bad(_join(key, "block_size"), f"{block_size} is not 512 or 4096")
        block_size = block_size or 512
        thin = self.get(t, key, "thin", bool)
        read_only = self.get(t, key, "read_only", bool)
        export = self.get(t, key, "nbd_export", str)
        if export is not None and not _EXPORT.match(export):
            self.bad(_join(key, "nbd_export"), f"{export!r}: use 1-64 letters, digits, . _ -")
        backing = None
        if backing_text is not None:
            backing = self.path(backing_text)
            bkey = _join(key, "backing")
            if not backing.parent.is_dir():
                self.bad(bkey, f"{backing.parent} is not a directory (not created: a typo "
                         "would go unnoticed)")  # fmt: skip
            elif backing.is_dir():
                self.bad(bkey, f"{backing} is a directory")
            elif not backing.exists():
                if read_only:
                    self.bad(bkey, f"{backing} does not exist (a read-only LUN is not created)")
                elif "size" not in t:
                    self.bad(bkey, f"{backing} does not exist: give size to create it")
        if size is not None and (size <= 0 or size % block_size):
            self.bad(_join(key, "size"), f"{size} is not a positive multiple of {block_size}")
        if len(self.problems) > before or backing is None or number is None:
            return None
        return LunSpec(number, backing, size, block_size, bool(thin), bool(read_only), export)

    def across(self, targets: list[TargetSpec], nbd: tuple[str, int] | None) -> None:
        """What no single table can see: duplicate names, a backing file served twice, NBD."""
        iqns: dict[str, int] = {}
        backings: dict[Path, str] = {}
        exports: dict[str, str] = {}
        for i, t in enumerate(targets):
            if t.iqn in iqns:
                self.bad(f"targets[{i}].iqn", f"{t.iqn} is also targets[{iqns[t.iqn]}]")
            iqns.setdefault(t.iqn, i)
            for j, lun in enumerate(t.luns):
                where = f"targets[{i}].luns[{j}]"
                real = lun.backing.resolve()
                if real in backings:
                    self.bad(f"{where}.backing", f"{lun.backing} is also {backings[real]}")
                backings.setdefault(real, where)
                if lun.nbd_export is not None:
                    if nbd is None:
                        self.bad(f"{where}.nbd_export", "needs [nbd] listen = HOST:PORT")
                    if lun.nbd_export in exports:
                        self.bad(
                            f"{where}.nbd_export",
                            f"{lun.nbd_export!r} is also {exports[lun.nbd_export]}",
                        )
                    exports.setdefault(lun.nbd_export, where)
        if nbd is not None and any(t.portal == nbd for t in targets):
            self.bad("nbd.listen", f"{nbd[0]}:{nbd[1]} is also an iSCSI portal")


_KIND_NAMES: dict[type, str] = {
    str: "a string", int: "an integer", bool: "true or false", list: "an array", dict: "a table"
}  # fmt: skip


def _kind(value: Any) -> str:
    for kind in (bool, int, str, list, dict, float):
        if isinstance(value, kind):
            return _KIND_NAMES.get(kind, "a number")
    return type(value).__name__


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def load(path: Path) -> TargetsConfig:
    """Read and validate the file; TargetConfigError lists every problem (one line each)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        st = path.stat()
    except OSError as exc:
        raise TargetConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        doc = tomllib.loads(raw.decode())
    except UnicodeDecodeError:
        raise TargetConfigError(path, ["not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetConfigError(path, [f"not valid TOML: {exc}"]) from None
    checker = _Checker(path.parent.resolve(), bool(st.st_mode & 0o077))
    config = checker.config(doc, path)
    if config is None:
        raise TargetConfigError(path, checker.problems)
    return config
