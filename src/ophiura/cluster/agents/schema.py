"""The built-in agents' parameters, declared as OCF meta-data (`ocf_metadata.Metadata`).

`ophiura cluster validate` checks every resource's params against its agent's meta-data: the
OCF agent's own `meta-data` output for `ocf:` kinds, these declarations for the built-in kinds.
So a typo (`address` for `ip`) is named before anything runs, with every other problem of the
file, rather than at start on one node (`param 'ip' is required`). tests/cluster/test_schema.py
reads each agent's source and fails when an agent reads a parameter not declared here.
"""

from __future__ import annotations

from ophiura.cluster.agents.ocf_metadata import Metadata, Parameter
from ophiura.cluster.agents.params import NETNS


def _md(name: str, *params: Parameter, open_: bool = False) -> Metadata:
    return Metadata(name, parameters={p.name: p for p in params}, open=open_)


def _req(name: str, desc: str, type_: str = "string") -> Parameter:
    return Parameter(name, required=True, type=type_, shortdesc=desc)


def _opt(name: str, desc: str, type_: str = "string", choices: tuple[str, ...] = ()) -> Parameter:
    return Parameter(name, type="select" if choices else type_, shortdesc=desc, choices=choices)


_NETNS = _opt(NETNS, "network namespace to run in")

BUILTIN: dict[str, Metadata] = {
    "command": _md(
        "command",
        _req("start", "shell command line for start"),
        _req("stop", "shell command line for stop"),
        _req("monitor", "shell command line for monitor"),
        _opt("validate", "shell command line for validate-all"),
        _opt("codes", "exit code convention", choices=("ocf", "lsb", "plain")),
        _opt("cwd", "working directory"),
        _NETNS,
        open_=True,  # every param reaches the commands as OCF_RESKEY_*
    ),
    "ip": _md(
        "ip",
        _req("ip", "the floating address, e.g. 198.51.100.100"),
        _req("nic", "interface to add it to, e.g. eth0"),
        _opt("cidr_netmask", "prefix length", "integer"),
        _opt("label", "interface label"),
        _opt("arp_count", "gratuitous ARPs to send", "integer"),
        _opt("arping", "arping program"),
        _NETNS,
    ),
    "fs": _md(
        "fs",
        _req("device", "block device to mount"),
        _req("directory", "mount point"),
        _opt("fstype", "filesystem type"),
        _opt("options", "mount options"),
        _opt("fsck", "check before mounting", choices=("auto", "yes", "no")),
        _opt("grace", "seconds between SIGTERM and SIGKILL of users on stop", "number"),
        _opt("mkfs", "filesystem type to make when the device holds none"),
        _opt("mkfs_options", "extra mkfs arguments"),
    ),
    "process": _md(
        "process",
        _req("command", "the command line to run and supervise"),
        _opt("check", "health check command (exit 0 = healthy)"),
        _opt("cwd", "working directory"),
        _opt("log", "file for its output"),
        _opt("grace", "seconds between SIGTERM and SIGKILL on stop", "number"),
        _opt("start_wait", "seconds it must stay alive for start to succeed", "number"),
        _NETNS,
    ),
    "volume": _md(
        "volume",
        _req("url", "iscsi:// or nbd:// URL of the LUN"),
        _opt("chap_file", "CHAP credentials file (chmod 600): user, secret, mutual_*"),
        _opt("node", "this node's name"),
        _opt("key", "reservation key"),
        _opt("initiator", "iSCSI initiator name"),
        _opt("type", "persistent reservation type"),
        _opt("aptpl", "persist reservations across target power loss", "boolean"),
        _opt("preempt", "preempt mode", choices=("abort", "plain")),
        _opt("unregister", "unregister the key on stop", "boolean"),
    ),
    "replicated-volume": _md(
        "replicated-volume",
        _req("control", "HOST:PORT of the HE control API"),
        _req("volume", "volume name"),
        _opt("mode", "run the HE, or take over a running one", choices=("process", "takeover")),
        _opt("config", "HE configuration file (required in process mode)"),
        _opt("secret_file", "shared secret file"),
        _opt("args", "extra HE arguments"),
        _opt("stop_command", "command run on stop (takeover mode)"),
        _opt("grace", "seconds between SIGTERM and SIGKILL on stop", "number"),
        _opt("log", "HE log file"),
        _opt("cwd", "HE working directory"),
        _NETNS,
    ),
    "disk-watchdog": _md(
        "disk-watchdog",
        _req("device", "shared block device"),
        _req("offset", "byte offset of the block reserved for this node", "integer"),
        _opt("block_size", "block size", "integer"),
        _opt("interval", "seconds between writes", "number"),
        _opt("deadline", "seconds a write may take", "number"),
        _opt("direct", "O_DIRECT", choices=("auto", "yes", "no")),
        _opt("node", "this node's name"),
    ),
    "attach": _md(
        "attach",
        _req("address", "NBD (or iSCSI) server exporting the volume: the HE on this node"),
        _opt("port", "its port (default 10809; 3260 for iscsi)", "integer"),
        _opt("export", "NBD export name (the HE's volume name)"),
        _opt("method", "how to attach", choices=("auto", "nbdfuse", "nbd", "iscsi")),
        _opt("iqn", "iSCSI target name (iscsi method)"),
        _opt("lun", "iSCSI LUN (iscsi method)", "integer"),
        _opt("nbd_device", "kernel NBD device, e.g. /dev/nbd0 (nbd method)"),
        _opt("connections", "NBD connections", "integer"),
        _opt("link", "symlink to the device, for the fs resource (/run/ophiura/attach/NAME)"),
        _opt("force", "stop takes the device from whatever holds it", "boolean"),
        _opt("direct_io", "loop device without a page cache of its own (nbdfuse)", "boolean"),
        _opt("grace", "seconds between SIGTERM and SIGKILL of its users when forced", "number"),
        _opt("check_offset", "offset of a 4 KiB block kept for monitor depth 2", "integer"),
    ),
}

# Init scripts get every param as OCF_RESKEY_*; systemd units take none but `netns` is ignored.
LSB = _md("lsb", _NETNS, open_=True)
SYSTEMD = _md("systemd")


def metadata_for(kind: str) -> Metadata | None:
    """The meta-data `kind`'s params are checked against; None when there is none to check
    against (a `python:` agent, or an OCF agent that is not installed: validate names that)."""
    if kind in BUILTIN:
        return BUILTIN[kind]
    prefix, sep, _ = kind.partition(":")
    if sep and prefix == "lsb":
        return LSB
    if sep and prefix == "systemd":
        return SYSTEMD
    if sep and prefix == "ocf":
        from ophiura.cluster.agents.ocf import OcfAgent, OcfKindError
        from ophiura.cluster.agents.ocf_metadata import MetadataError
        from ophiura.cluster.agents.registry import agent_for

        try:
            agent = agent_for(kind)
            if isinstance(agent, OcfAgent):
                return agent.metadata_blocking(kind)
        except (LookupError, ValueError, OcfKindError, MetadataError):
            return None
    return None
