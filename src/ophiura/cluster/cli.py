"""`ophiura node` and `ophiura cluster ...`: thin wrappers over daemon.py and the admin API."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import Any

import click

from ophiura.cluster.config import ClusterConfig, ConfigError, load
from ophiura.cluster.validation import validate

DEFAULT_CONFIG = "/etc/ophiura/cluster.toml"


def _load(path: str) -> ClusterConfig:
    try:
        return load(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Cluster TOML."
)
@click.option("--name", required=True, help="This node's name in the configuration.")
@click.option(
    "--keep-resources",
    is_flag=True,
    help="On SIGTERM leave every hierarchy running, for the restarted daemon to adopt "
    "(upgrades; as cluster.stop_on_shutdown = false). Maintenance mode and frozen "
    "hierarchies are always left running.",
)
def node(config_path: str, name: str, keep_resources: bool) -> None:
    """Run one cluster node until SIGTERM (SIGHUP reloads the configuration)."""
    from ophiura.cluster.daemon import NodeDaemon

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))  # events: INFO

    cfg = _load(config_path)
    problems = validate(cfg)
    if problems:
        raise click.ClickException(f"{config_path} is not valid:\n  " + "\n  ".join(problems))
    try:
        daemon = NodeDaemon(cfg, name, keep_resources=keep_resources)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        loop.add_signal_handler(signal.SIGHUP, daemon.sighup)
        await daemon.run()

    try:
        asyncio.run(main())
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def cluster() -> None:
    """Validate the cluster configuration and administer a running cluster."""


@cluster.command("validate")
@click.argument("config_path", type=click.Path(dir_okay=False))
def validate_cmd(config_path: str) -> None:
    """Check CONFIG and name every problem (exit 1 if any)."""
    cfg = _load(config_path)
    problems = validate(cfg)
    if problems:
        for p in problems:
            click.echo(f"error: {p}")
        click.echo(f"{config_path}: {len(problems)} problem(s)")
        raise SystemExit(1)
    click.echo(
        f"{config_path}: valid ({len(cfg.nodes)} nodes, {len(cfg.links)} links, "
        f"{len(cfg.hierarchies)} hierarchies, quorum {cfg.quorum})"
    )


def _default_config() -> str:
    return os.environ.get("OPHIURA_CLUSTER_CONFIG", DEFAULT_CONFIG)


def _config_option(f: Any) -> Any:
    f = click.option(
        "--node",
        "via",
        default=None,
        help="Node whose admin API to ask (default: each node in turn until one answers).",
    )(f)
    return click.option(
        "--config",
        "config_path",
        default=_default_config,
        type=click.Path(dir_okay=False),
        help="Cluster TOML ($OPHIURA_CLUSTER_CONFIG).",
    )(f)


def request(config_path: str, via: str | None, req: dict[str, Any]) -> Any:
    """Send `req` to one node's admin API; fall over to the next node if it does not answer."""
    from ophiura.cluster.admin import AdminError, call

    cfg = _load(config_path)
    names = [via] if via else list(cfg.nodes)
    if via and via not in cfg.nodes:
        raise click.ClickException(f"unknown node {via!r}")
    errors = []
    for n in names:
        host, port = cfg.nodes[n].admin
        try:
            return asyncio.run(call(host, port, cfg.key("admin"), req, timeout=5.0))
        except AdminError as exc:
            if "cannot reach" not in str(exc):
                raise click.ClickException(f"{n}: {exc}") from exc
            errors.append(str(exc))
    raise click.ClickException("no node answered:\n  " + "\n  ".join(errors))


def _render(st: dict[str, Any]) -> str:
    lines = [f"cluster {st['cluster']} (asked {st['node']}, quorum mode {st['quorum_mode']})"]
    adm = st["admin"]
    flags = [f"maintenance={'on' if adm['m'] else 'off'}"]
    if adm["s"]:
        flags.append(f"standby={','.join(adm['s'])}")
    if adm["f"]:
        flags.append(f"frozen={','.join(adm['f'])}")
    lines.append("admin: " + " ".join(flags))
    conf = st.get("config", {})
    differ = conf.get("differ", [])
    lines.append(
        f"config: {conf.get('digest', '?')} ({conf.get('path', '?')})"
        + (f"  DIFFERS on {', '.join(differ)}" if differ else "  same on every node heard")
    )
    lines += [f"WARNING ({st['node']}): {w}" for w in st.get("exposure", [])]
    lines.append("nodes:")
    for n, info in st["nodes"].items():
        links = " ".join(f"{k}={v}" for k, v in info.get("links", {}).items())
        mark = f"  config {conf['nodes'].get(n)} DIFFERS" if n in differ else ""
        lines.append(f"  {n:12} {info['state']:8} {info.get('node_state') or '-':10} {links}{mark}")
    lines.append("hierarchies:")
    for h, info in st["hierarchies"].items():
        extra = []
        if info["frozen"]:
            extra.append("FROZEN")
        if info["switchover"]:
            extra.append(f"switchover->{info['switchover']}")
        if info["blocked"]:
            extra.append(f"blocked: {info['blocked']}")
        if info["fail_counts"]:
            extra.append(f"fail counts {info['fail_counts']}")
        states = " ".join(f"{n}={s}" for n, s in info["states"].items())
        lines.append(
            f"  {h:12} owner={info['owner'] or '-':8} gen={info['gen']} {states} {' '.join(extra)}"
        )
        per_node = info.get("resources", {})
        for r in info["local"]["resources"]:
            where = " ".join(f"{n}={res.get(r, '?')}" for n, res in per_node.items())
            last = info["local"]["last"].get(r, "")
            lines.append(f"      {r:16} {where}" + (f"  (last here: {last})" if last else ""))
    rej = st["heartbeat"]["rejected"]
    if rej:
        lines.append(f"heartbeats rejected: {rej}")
    lines.append("last events:")
    for e in st["events"][-10:]:
        when = time.strftime("%H:%M:%S", time.localtime(e.get("time", 0)))
        what = " ".join(
            f"{k}={v}"
            for k, v in e.items()
            if k not in ("time", "node", "output") and v not in ("", None)
        )
        lines.append(f"  {when} {e.get('node')} {what}")
    return "\n".join(lines)


@cluster.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: str, via: str | None, as_json: bool) -> None:
    """Nodes, links, hierarchies, resources, fail counts, owners and the last events."""
    st = request(config_path, via, {"op": "status"})
    click.echo(json.dumps(st, indent=2) if as_json else _render(st))


@cluster.command("reload")
@_config_option
def reload_cmd(config_path: str, via: str | None) -> None:
    """Make every node (or --node) re-read its file and apply what needs no resource restart.

    Each node validates its own file; a change that would restart a resource (or the daemon) is
    refused with the reason and nothing changes on that node. Exit 1 if any node refused."""
    from ophiura.cluster.admin import AdminError, call

    cfg = _load(config_path)
    if via and via not in cfg.nodes:
        raise click.ClickException(f"unknown node {via!r}")
    failed = False
    for n in [via] if via else list(cfg.nodes):
        host, port = cfg.nodes[n].admin
        try:
            r = asyncio.run(call(host, port, cfg.key("admin"), {"op": "reload"}, timeout=10.0))
        except AdminError as exc:
            click.echo(f"{n}: not reloaded: {exc}")
            failed = True
            continue
        if r["refused"]:
            failed = True
            click.echo(f"{n}: refused, nothing changed:")
            for why in r["refused"]:
                click.echo(f"    {why}")
        elif r["changes"]:
            click.echo(f"{n}: applied (config {r['digest']}):")
            for what in r["changes"]:
                click.echo(f"    {what}")
        else:
            click.echo(f"{n}: unchanged (config {r['digest']})")
    if failed:
        raise SystemExit(1)


@cluster.group("config")
def config_group() -> None:
    """Compare the configuration files of the nodes."""


@config_group.command("diff")
@click.option(
    "--config",
    "config_path",
    default=_default_config,
    type=click.Path(dir_okay=False),
    help="This node's file ($OPHIURA_CLUSTER_CONFIG).",
)
@click.option("--node", "via", required=True, help="The node whose file to compare with.")
def config_diff(config_path: str, via: str) -> None:
    """Show how NODE's file (as it runs it) differs from this one; exit 1 if it does."""
    import difflib

    cfg = _load(config_path)
    theirs = request(config_path, via, {"op": "config"})
    if theirs["digest"] == cfg.digest:
        click.echo(f"{via}: same configuration ({cfg.digest})")
        return
    diff = difflib.unified_diff(
        cfg.text.splitlines(keepends=True),
        theirs["text"].splitlines(keepends=True),
        fromfile=f"{config_path} (here, {cfg.digest})",
        tofile=f"{via}:{theirs['path']} ({theirs['digest']})",
    )
    click.echo("".join(diff).rstrip("\n"))
    raise SystemExit(1)


@cluster.command()
@_config_option
@click.argument("hierarchy")
@click.option("--to", "to", required=True, help="Node to move the hierarchy to.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait.")
def switchover(
    config_path: str, via: str | None, hierarchy: str, to: str, wait: bool, timeout: float
) -> None:
    """Move HIERARCHY to node TO (manual takeover/surrender); nothing is left behind."""
    request(config_path, via, {"op": "switchover", "hierarchy": hierarchy, "to": to})
    if not wait:
        click.echo(f"switchover of {hierarchy} to {to} requested")
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = request(config_path, via, {"op": "status"})["hierarchies"][hierarchy]
        if st["running_on"] == [to] and not st["switchover"]:
            click.echo(f"{hierarchy} runs on {to}")
            return
        if not st["switchover"] and st["running_on"] != [to]:
            where = ", ".join(st["running_on"]) or "nowhere"
            raise click.ClickException(
                f"switchover of {hierarchy} to {to} failed; it runs on {where}"
            )
        time.sleep(0.2)
    raise click.ClickException(f"switchover of {hierarchy} to {to} not done after {timeout:g} s")


def _simple(op: str, key: str, doc: str) -> None:
    @cluster.command(name=op, help=doc)
    @_config_option
    @click.argument(key)
    def cmd(config_path: str, via: str | None, **kw: str) -> None:
        request(config_path, via, {"op": op, key: kw[key]})
        click.echo(f"{op} {kw[key]}: done")


_simple("standby", "node", "Move every hierarchy off NODE and keep them off.")
_simple(
    "online", "node", "Let NODE run hierarchies again (no automatic failback unless configured)."
)
_simple("freeze", "hierarchy", "Lock HIERARCHY where it is: no start, stop or recovery.")
_simple("unfreeze", "hierarchy", "Let the cluster manage HIERARCHY again.")
_simple(
    "cleanup",
    "hierarchy",
    "Clear HIERARCHY's fail counts on every node (a stop-failed node: you assert it is down).",
)


@cluster.command()
@_config_option
@click.argument("mode", type=click.Choice(["on", "off"]))
def maintenance(config_path: str, via: str | None, mode: str) -> None:
    """Cluster-wide: stop all recovery (monitoring goes on) while you work."""
    request(config_path, via, {"op": "maintenance", "on": mode == "on"})
    click.echo(f"maintenance {mode}")


@cluster.command(name="block-link", hidden=True)
@_config_option
@click.argument("link", type=int)
@click.option("--unblock", is_flag=True)
def block_link(config_path: str, via: str | None, link: int, unblock: bool) -> None:
    """Test hook (cluster.test_hooks = true): drop heartbeats on LINK at one node."""
    request(config_path, via, {"op": "block-link", "link": link, "blocked": not unblock})


@cluster.command(name="tie-breaker")
@click.option("--url", required=True, help="The quorum LUN: iscsi://host[:port]/iqn/lun.")
@click.option(
    "--node",
    "node_name",
    required=True,
    envvar="OPHIURA_NODE",
    help="This node (its reservation key); default $OPHIURA_NODE, which the daemon sets.",
)
@click.option(
    "--state",
    "state_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to remember the holder between asks; {node} = this node.",
)
@click.option("--challenge", default=3.0, show_default=True, help="Seconds a holder may be silent.")
def tie_breaker(url: str, node_name: str, state_path: str, challenge: float) -> None:
    """Quorate mode's tie-breaker (`[cluster] tie_breaker`): exit 0 if we hold the quorum LUN."""
    from pathlib import Path

    from ophiura.cluster.tiebreaker import arbitrate

    state = Path(state_path.replace("{node}", node_name))
    held, why = asyncio.run(arbitrate(url, node_name, state, challenge))
    click.echo(("held: " if held else "not held: ") + why)
    raise SystemExit(0 if held else 1)
