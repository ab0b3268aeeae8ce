"""The cluster configuration: one TOML file, identical on every node.

Parsing (`load`, `parse`) turns TOML into frozen dataclasses and only fails on what makes the
file unreadable (not TOML, wrong types). `validate()` then names *every* problem at once
(unknown node, dependency cycle, unknown agent kind, bad timing, shared data without a fence),
because an operator fixing a cluster file one error per run learns to hate the tool.
See docs/cluster.md for the schema with an example.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ophiura.cluster.agents.base import Resource


class ConfigError(Exception):
    """The file cannot be read or parsed; `problems` lists what validate() found, if any."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


QUORUM_MODES = ("resource-driven", "quorate")
FAILBACK_MODES = ("manual", "auto")
NOTIFY_KINDS = ("command", "webhook", "email")
DEFAULT_HEARTBEAT_PORT = 5405


@dataclass(frozen=True)
class Timings:
    """Defaults detect a dead node in under 1 s: 7 missed heartbeats at 0.1 s."""

    interval: float = 0.1
    deadline: float = 0.7
    # A starting node decides nothing until it has heard every peer or this long has passed
    # (None: 5 s or one deadline, whichever is longer): a cold start where daemons come up a
    # second apart must not hand hierarchies to whoever was quickest.
    startup_grace: float | None = None
    # A node that left with hierarchies still running (restarting: --keep-resources,
    # maintenance, frozen) keeps them locked to itself this long after its last heartbeat: the
    # peers neither start nor fence for them (Pacemaker's shutdown-lock). 0: no lock.
    restart_lock: float = 60.0

    @property
    def grace(self) -> float:
        return max(5.0, self.deadline) if self.startup_grace is None else self.startup_grace


@dataclass(frozen=True)
class Node:
    name: str
    votes: int = 1
    admin: tuple[str, int] = ("127.0.0.1", 7400)
    http: tuple[str, int] | None = None  # REST API and dashboard (ophiura.web); None: cluster.http


@dataclass(frozen=True)
class Link:
    """One heartbeat network: each node's address on it (host:port; port defaults to `port`)."""

    name: str
    port: int
    addresses: Mapping[str, tuple[str, int]]


@dataclass(frozen=True)
class ResourceSpec:
    resource: Resource
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hierarchy:
    name: str
    nodes: tuple[str, ...]  # priority order, best first
    resources: Mapping[str, ResourceSpec]
    ownable: str | None = (
        None  # acquired first, released last; its acquisition fences the old owner
    )
    shared_data: bool = False
    failback: str = "manual"
    max_restarts: int = 3
    restart_window: float = 300.0
    failure_expiry: float = 600.0
    fence_on_stop_failure: bool = True

    def depends(self, name: str) -> tuple[str, ...]:
        return self.resources[name].depends_on

    def dependents(self, name: str) -> tuple[str, ...]:
        return tuple(r for r, spec in self.resources.items() if name in spec.depends_on)

    def priority(self, node: str) -> int:
        """Lower is better; nodes outside the list sort last."""
        return self.nodes.index(node) if node in self.nodes else len(self.nodes)


@dataclass(frozen=True)
class FenceDevice:
    """A fence-agents program (key=value on stdin) or a built-in `exec` command."""

    name: str
    agent: str  # "fence_ipmilan", ... or "exec"
    params: Mapping[str, str] = field(default_factory=dict)
    plugs: Mapping[str, str] = field(default_factory=dict)  # node -> plug/port
    command: tuple[str, ...] = ()  # for agent = "exec": argv, OPHIURA_FENCE_NODE in env
    timeout: float = 30.0


@dataclass(frozen=True)
class Notifier:
    kind: str  # command | webhook | email
    target: str  # argv[0] / URL / recipient list joined by ","
    args: tuple[str, ...] = ()
    smtp: tuple[str, int] = ("127.0.0.1", 25)
    sender: str = "ophiura@localhost"
    events: tuple[str, ...] = ()  # empty: every kind
    timeout: float = 10.0


@dataclass(frozen=True)
class ApiUser:
    """A REST API user (ophiura.web): only the SHA-256 of the token is in the (shared) file."""

    name: str
    token_sha256: str
    role: str = "admin"  # "admin" (everything) or "read" (GET only)


API_ROLES = ("admin", "read")


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    secret: bytes
    nodes: Mapping[str, Node]
    links: tuple[Link, ...]
    hierarchies: Mapping[str, Hierarchy]
    timings: Timings = Timings()
    quorum: str = "resource-driven"
    tie_breaker: tuple[str, ...] = ()  # command: exit 0 = we hold the tie-breaker
    allow_unfenced: bool = False
    stop_on_shutdown: bool = True  # False leaves services running unmanaged (upgrades)
    state_dir: str = "/var/lib/ophiura/cluster/{node}"
    test_hooks: bool = False
    # Self-fence backing (watchdog.py): device path ("{node}" = this node), "" = none.
    watchdog: str = ""
    watchdog_timeout: float = 10.0
    fence_devices: Mapping[str, FenceDevice] = field(default_factory=dict)
    fence_levels: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    notifiers: tuple[Notifier, ...] = ()
    http: tuple[str, int] | None = None  # REST API address of every node without its own; None: off
    # HTTPS for the REST API: PEM certificate chain and key files ("{node}" = this node); "": HTTP
    http_tls_cert: str = ""
    http_tls_key: str = ""
    api_users: Mapping[str, ApiUser] = field(default_factory=dict)
    source: str = ""  # path, for messages
    # SHA-256 (16 hex digits) of the parsed file: comments and layout do not count. Rides in
    # every heartbeat, so a node whose file differs shows in `cluster status`.
    digest: str = field(default="", compare=False)
    text: str = field(default="", compare=False, repr=False)  # the file as loaded (config diff)
    unknown: tuple[str, ...] = ()  # keys parse() did not recognise (typos), for validate()

    def key(self, purpose: str) -> bytes:
        """A key per purpose so a heartbeat MAC can never be replayed as an admin MAC."""
        return hmac.new(
            self.secret, f"ophiura:{self.name}:{purpose}".encode(), hashlib.sha256
        ).digest()

    def state_path(self, node: str) -> Path:
        return Path(self.state_dir.replace("{node}", node))

    def watchdog_path(self, node: str) -> str:
        return self.watchdog.replace("{node}", node)

    def fenceable(self, node: str) -> bool:
        return bool(self.fence_levels.get(node))

    def http_tls(self, node: str) -> tuple[Path, Path] | None:
        """The REST API's (certificate, key) files on `node`; None: plain HTTP."""
        if not self.http_tls_cert:
            return None
        return (
            Path(self.http_tls_cert.replace("{node}", node)),
            Path(self.http_tls_key.replace("{node}", node)),
        )

    def http_address(self, node: str) -> tuple[str, int] | None:
        """Where `node` serves the REST API and dashboard; None when it serves none."""
        return self.nodes[node].http or self.http


def _host_port(value: Any, default_port: int, where: str) -> tuple[str, int]:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected 'host' or 'host:port', got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: bad port in {value!r}")
    return host.strip("[]"), int(port)


def _get(
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    where: str,
    default: Any = None,
) -> Any:
    value = table.get(key, default)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise ConfigError(
            f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}"
        )
    return value


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def _resource(hier: str, t: Mapping[str, Any], where: str) -> ResourceSpec:
    name = _get(t, "name", str, where) or ""
    params = t.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params: expected a table")
    kw: dict[str, Any] = {}
    for key in ("monitor_interval", "monitor_timeout", "start_timeout", "stop_timeout"):
        if key in t:
            kw[key] = _get(t, key, float, where)
    if "monitor_depth" in t:
        kw["monitor_depth"] = _get(t, "monitor_depth", int, where)
    res = Resource(
        name=name,
        kind=_get(t, "kind", str, where) or "",
        params={str(k): str(v) for k, v in params.items()},
        hierarchy=hier,
        **kw,
    )
    return ResourceSpec(res, _strs(t.get("depends_on"), f"{where}.depends_on"))


def _hierarchy(t: Mapping[str, Any], i: int) -> Hierarchy:
    where = f"hierarchies[{i}]"
    name = _get(t, "name", str, where) or ""
    resources: dict[str, ResourceSpec] = {}
    for j, rt in enumerate(t.get("resources", [])):
        if not isinstance(rt, dict):
            raise ConfigError(f"{where}.resources[{j}]: expected a table")
        spec = _resource(name, rt, f"{where}.resources[{j}]")
        if spec.resource.name in resources:
            raise ConfigError(f"{where}: resource {spec.resource.name!r} defined twice")
        resources[spec.resource.name] = spec
    kw: dict[str, Any] = {}
    for key in ("restart_window", "failure_expiry"):
        if key in t:
            kw[key] = _get(t, key, float, where)
    for key, kind in (
        ("max_restarts", int),
        ("shared_data", bool),
        ("failback", str),
        ("fence_on_stop_failure", bool),
        ("ownable", str),
    ):
        if key in t:
            kw[key] = _get(t, key, kind, where)
    return Hierarchy(
        name=name, nodes=_strs(t.get("nodes"), f"{where}.nodes"), resources=resources, **kw
    )


KNOWN_KEYS: Mapping[str, frozenset[str]] = {
    "": frozenset({"cluster", "timings", "nodes", "links", "hierarchies", "fencing", "notify"}),
    "cluster": frozenset({"name", "secret", "secret_file", "quorum", "tie_breaker",
                          "allow_unfenced", "stop_on_shutdown", "state_dir", "test_hooks",
                          "http", "http_tls_cert", "http_tls_key", "api_users", "watchdog",
                          "watchdog_timeout"}),
    "timings": frozenset(
        {"interval", "deadline", "startup_grace", "max_clock_skew", "restart_lock"}
    ),
    "nodes": frozenset({"name", "votes", "admin", "http"}),
    "links": frozenset({"name", "port", "addresses"}),
    "hierarchies": frozenset({"name", "nodes", "resources", "ownable", "shared_data", "failback",
                              "max_restarts", "restart_window", "failure_expiry",
                              "fence_on_stop_failure"}),
    "resources": frozenset({"name", "kind", "params", "depends_on", "monitor_interval",
                            "monitor_timeout", "monitor_depth", "start_timeout", "stop_timeout"}),
    "fencing": frozenset({"devices", "levels"}),
    "devices": frozenset({"name", "agent", "params", "plugs", "command", "timeout"}),
    "levels": frozenset({"node", "level", "devices"}),
    "notify": frozenset({"kind", "command", "url", "to", "smtp", "from", "events", "timeout"}),
}  # fmt: skip


def unknown_keys(data: Mapping[str, Any]) -> list[str]:
    """Every key the schema does not know, with where it is: a typo must not pass silently."""
    out: list[str] = []

    def check(table: Any, section: str, where: str) -> None:
        if isinstance(table, dict):
            out.extend(f"{where}{k}" for k in table if k not in KNOWN_KEYS[section])

    def each(tables: Any, section: str, where: str) -> None:
        for i, t in enumerate(tables if isinstance(tables, list) else []):
            check(t, section, f"{where}[{i}].")
            if section == "hierarchies" and isinstance(t, dict):
                each(t.get("resources"), "resources", f"{where}[{i}].resources")

    check(data, "", "")
    check(data.get("cluster"), "cluster", "cluster.")
    check(data.get("timings"), "timings", "timings.")
    for section in ("nodes", "links", "hierarchies", "notify"):
        each(data.get(section), section, section)
    fencing = data.get("fencing")
    check(fencing, "fencing", "fencing.")
    if isinstance(fencing, dict):
        each(fencing.get("devices"), "devices", "fencing.devices")
        each(fencing.get("levels"), "levels", "fencing.levels")
    return out


def parse(data: Mapping[str, Any], source: str = "", base: Path | None = None) -> ClusterConfig:
    """Build a ClusterConfig from parsed TOML; raises ConfigError on type errors only."""
    c = data.get("cluster", {})
    if not isinstance(c, dict):
        raise ConfigError("[cluster] must be a table")
    secret = _get(c, "secret", str, "cluster")
    secret_file = _get(c, "secret_file", str, "cluster")
    if secret_file:
        path = Path(secret_file)
        if base is not None and not path.is_absolute():
            path = base / path
        from ophiura.replication.wire.secret import SecretError, load_secret

        try:
            secret_bytes = load_secret(path)
        except SecretError as exc:
            raise ConfigError(f"cluster.secret_file: {exc}") from exc
    else:
        secret_bytes = (secret or "").encode()
    tt = data.get("timings", {})
    timings = Timings(
        interval=_get(tt, "interval", float, "timings", 0.1),
        deadline=_get(tt, "deadline", float, "timings", 0.7),
        startup_grace=_get(tt, "startup_grace", float, "timings"),
        restart_lock=_get(tt, "restart_lock", float, "timings", 60.0),
    )
    # max_clock_skew: accepted so that older files still load, and ignored: heartbeats carry no
    # wall-clock time (membership never depends on it; see cluster/heartbeat.py).
    _get(tt, "max_clock_skew", float, "timings")
    nodes: dict[str, Node] = {}
    for i, nt in enumerate(data.get("nodes", [])):
        where = f"nodes[{i}]"
        name = _get(nt, "name", str, where) or ""
        admin = _host_port(nt.get("admin", "127.0.0.1:7400"), 7400, f"{where}.admin")
        if name in nodes:
            raise ConfigError(f"{where}: node {name!r} defined twice")
        http = _host_port(nt["http"], 8440, f"{where}.http") if "http" in nt else None
        nodes[name] = Node(name, votes=_get(nt, "votes", int, where, 1), admin=admin, http=http)
    links: list[Link] = []
    for i, lt in enumerate(data.get("links", [])):
        where = f"links[{i}]"
        port = _get(lt, "port", int, where, DEFAULT_HEARTBEAT_PORT)
        addrs = lt.get("addresses", {})
        if not isinstance(addrs, dict):
            raise ConfigError(f"{where}.addresses: expected a table node = 'host[:port]'")
        links.append(
            Link(
                name=_get(lt, "name", str, where) or f"link{i}",
                port=port,
                addresses={
                    n: _host_port(a, port, f"{where}.addresses.{n}") for n, a in addrs.items()
                },
            )
        )
    hierarchies: dict[str, Hierarchy] = {}
    for i, ht in enumerate(data.get("hierarchies", [])):
        h = _hierarchy(ht, i)
        if h.name in hierarchies:
            raise ConfigError(f"hierarchies[{i}]: hierarchy {h.name!r} defined twice")
        hierarchies[h.name] = h
    ft = data.get("fencing", {})
    devices: dict[str, FenceDevice] = {}
    for i, dt in enumerate(ft.get("devices", [])):
        where = f"fencing.devices[{i}]"
        devices[dt.get("name", f"dev{i}")] = FenceDevice(
            name=_get(dt, "name", str, where) or f"dev{i}",
            agent=_get(dt, "agent", str, where) or "",
            params={str(k): str(v) for k, v in dt.get("params", {}).items()},
            plugs={str(k): str(v) for k, v in dt.get("plugs", {}).items()},
            command=_strs(dt.get("command"), f"{where}.command"),
            timeout=_get(dt, "timeout", float, where, 30.0),
        )
    levels: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    for i, lt in enumerate(ft.get("levels", [])):
        where = f"fencing.levels[{i}]"
        node = _get(lt, "node", str, where) or ""
        levels.setdefault(node, []).append(
            (_get(lt, "level", int, where, 1), _strs(lt.get("devices"), f"{where}.devices"))
        )
    notifiers = []
    for i, nt in enumerate(data.get("notify", [])):
        where = f"notify[{i}]"
        kind = _get(nt, "kind", str, where) or ""
        target = nt.get("command") or nt.get("url") or nt.get("to") or ""
        args: tuple[str, ...] = ()
        if kind == "command":
            argv = _strs(target, f"{where}.command")
            target, args = (argv[0], argv[1:]) if argv else ("", ())
        elif kind == "email":
            target = ",".join(_strs(target, f"{where}.to"))
        notifiers.append(
            Notifier(
                kind=kind,
                target=str(target),
                args=args,
                smtp=_host_port(nt.get("smtp", "127.0.0.1:25"), 25, f"{where}.smtp"),
                sender=_get(nt, "from", str, where, "ophiura@localhost"),
                events=_strs(nt.get("events"), f"{where}.events"),
                timeout=_get(nt, "timeout", float, where, 10.0),
            )
        )
    return ClusterConfig(
        name=_get(c, "name", str, "cluster") or "",
        secret=secret_bytes,
        nodes=nodes,
        links=tuple(links),
        hierarchies=hierarchies,
        timings=timings,
        quorum=_get(c, "quorum", str, "cluster", "resource-driven"),
        tie_breaker=_strs(c.get("tie_breaker"), "cluster.tie_breaker"),
        allow_unfenced=_get(c, "allow_unfenced", bool, "cluster", False),
        stop_on_shutdown=_get(c, "stop_on_shutdown", bool, "cluster", True),
        state_dir=_get(c, "state_dir", str, "cluster", "/var/lib/ophiura/cluster/{node}"),
        test_hooks=_get(c, "test_hooks", bool, "cluster", False),
        watchdog=_get(c, "watchdog", str, "cluster", ""),
        watchdog_timeout=_get(c, "watchdog_timeout", float, "cluster", 10.0),
        fence_devices=devices,
        fence_levels={n: tuple(d for _, d in sorted(lv)) for n, lv in levels.items()},
        notifiers=tuple(notifiers),
        http=_host_port(c["http"], 8440, "cluster.http") if "http" in c else None,
        http_tls_cert=_tls_path(c, "http_tls_cert", base),
        http_tls_key=_tls_path(c, "http_tls_key", base),
        api_users=_api_users(c.get("api_users", {})),
        source=source,
        digest=config_digest(data),
        unknown=tuple(unknown_keys(data)),
    )


def _tls_path(c: Mapping[str, Any], key: str, base: Path | None) -> str:
    """cluster.http_tls_cert / http_tls_key: both or neither; relative to the file."""
    other = "http_tls_key" if key == "http_tls_cert" else "http_tls_cert"
    value = _get(c, key, str, "cluster", "")
    if bool(value) != bool(c.get(other)):
        raise ConfigError(f"cluster.{key}: http_tls_cert and http_tls_key go together")
    if value and base is not None and not Path(value).is_absolute():
        value = str(base / value)
    return str(value)


def _api_users(table: Any) -> dict[str, ApiUser]:
    """[cluster.api_users] NAME = { token_sha256 = HEX, role = "admin"|"read" } (ophiura.web)."""
    if not isinstance(table, dict):
        raise ConfigError("cluster.api_users: expected a table NAME = { token_sha256 = ... }")
    users = {}
    for name, t in table.items():
        where = f"cluster.api_users.{name}"
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: expected a table {{ token_sha256 = ..., role = ... }}")
        digest = _get(t, "token_sha256", str, where, "")
        users[name] = ApiUser(name, digest.lower(), _get(t, "role", str, where, "admin"))
    return users


def config_digest(data: Mapping[str, Any]) -> str:
    """The parsed file's fingerprint: equal for files that mean the same, whatever the layout."""
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def load(path: str | Path) -> ClusterConfig:
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text)
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    cluster = data.get("cluster")
    if isinstance(cluster, dict) and "secret" in cluster and mode & 0o007:
        # Whoever reads the secret can forge heartbeats and admin requests (fence, stop, move).
        raise ConfigError(
            f"{path} holds cluster.secret and is readable by others (mode "
            f"{stat.S_IMODE(mode):04o}): chmod o-rwx {path} (600 or 640), or move the secret "
            "to a file of its own named by cluster.secret_file"
        )
    return replace(parse(data, source=str(path), base=path.parent), text=text)
