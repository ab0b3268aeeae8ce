"""`ophiura he`, `ophiura takeover`, `ophiura status`, `ophiura volume ...`: thin click wrappers.

The HE itself lives in `host_element`; these commands only parse options (or a TOML file with
the same keys), and talk to a running HE over its control API (`control`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import click

from ophiura.replication.he.config import (
    DEFAULT_CONTROL,
    ConfigError,
    build_config,
    load_toml,
    parse_host_port,
)
from ophiura.replication.he.control import ControlError, control_call
from ophiura.replication.he.takeover import TakeoverError
from ophiura.sizes import format_size, parse_size

log = logging.getLogger(__name__)

_DEFAULT_CONTROL = f"{DEFAULT_CONTROL[0]}:{DEFAULT_CONTROL[1]}"


def _secret(path: Path | None) -> bytes:
    from ophiura.replication.wire.secret import SecretError, load_secret

    try:
        return load_secret(path)
    except (SecretError, OSError) as exc:
        raise click.ClickException(f"secret: {exc}") from exc


@click.command("he")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file with the keys below (flags given here override it).",
)
@click.option(
    "--se",
    "ses",
    multiple=True,
    metavar="NAME=HOST:PORT[,delay=MS][,rate=MBIT]",
    help="A storage element (repeat). delay/rate emulate the link (one-way ms, Mbit/s).",
)
@click.option("--quorum", type=int, help="Write quorum Q: SEs that must ack before the host.")
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    metavar="NAME:SIZE",
    help="A volume to serve (repeat); created on the SEs if missing.",
)
@click.option("--iscsi", metavar="HOST:PORT", help="Serve volumes over iSCSI here.")
@click.option("--nbd", metavar="HOST:PORT", help="Serve volumes over NBD here.")
@click.option(
    "--tls-certificates",
    type=click.Path(file_okay=False, path_type=Path),
    help="NBD TLS: DIR with ca-cert.pem, server-cert.pem, server-key.pem.",
)
@click.option(
    "--tls",
    type=click.Choice(["off", "on", "require"]),
    help="NBD TLS mode (default: require with --tls-certificates, else off).",
)
@click.option(
    "--tls-verify-peer",
    is_flag=True,
    default=None,
    help="NBD TLS: refuse clients without a certificate signed by DIR/ca-cert.pem.",
)
@click.option(
    "--nbd-allow",
    multiple=True,
    metavar="CIDR",
    help="Accept NBD connections only from these addresses (repeat; default: any).",
)
@click.option(
    "--nbd-max-connections",
    type=click.IntRange(min=1),
    metavar="N",
    help="Close NBD connections beyond N at once (default: no cap).",
)
@click.option(
    "--chap-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="iSCSI CHAP: a TOML file (chmod 600) with user, secret [, mutual_user, mutual_secret].",
)
@click.option(
    "--initiator",
    multiple=True,
    metavar="[VOLUME=]IQN",
    help="iSCSI ACL: only these initiators may log in (to VOLUME, or to every volume; repeat).",
)
@click.option("--control", metavar="HOST:PORT", help=f"Control API (default {_DEFAULT_CONTROL}).")
@click.option("--cache", metavar="SIZE", help="Read cache per volume (default 64M, 0 disables).")
@click.option("--queue", metavar="SIZE", help="Write queue per volume (default 64M).")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Shared secret (default $XDG_CONFIG_HOME/ophiura/secret).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where SCSI state files are restored to (default: a fresh temp dir).",
)
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    help="Serve Prometheus GET /metrics here (off by default; beyond loopback it needs a token).",
)
@click.option(
    "--metrics-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the bearer token /metrics requires (required unless loopback).",
)
@click.option("--iqn-prefix", help="iSCSI name prefix (default iqn.2026-11.org.ophiura:).")
@click.option(
    "--standby",
    is_flag=True,
    default=None,
    help="Connect to the SEs but serve nothing until `ophiura takeover`.",
)
def he(config_file: Path | None, **flags: Any) -> None:
    """Run a host element: replicate volumes to SEs, serve them over iSCSI and NBD."""
    from ophiura.replication.he.host_element import HostElement
    from ophiura.serve import run_event_loop

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        values: dict[str, Any] = load_toml(config_file) if config_file else {}
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    for key, value in flags.items():
        if value is None or value == ():
            continue
        values[key] = list(value) if isinstance(value, tuple) else value
    if "ses" in values:
        values["se"] = values.pop("ses")
    if "volumes" in values:
        values["volume"] = values.pop("volumes")
    try:
        config = build_config(values)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    _check_nbd_certificates(config)
    try:
        host_element = HostElement(config, _secret(config.secret_file))
    except ValueError as exc:  # a metrics token file that cannot be read
        raise click.ClickException(str(exc)) from exc
    if host_element.warning:
        click.secho(f"WARNING: {host_element.warning}", fg="red", bold=True, err=True)
    try:
        run_event_loop(host_element.run_until_signalled)
    except (OSError, ValueError, TakeoverError, ControlError) as exc:
        raise click.ClickException(str(exc) or type(exc).__name__) from exc


def _check_nbd_certificates(config: Any) -> None:
    """Load the NBD TLS certificates now: a wrong directory is one line, not a failed start."""
    from ophiura.nbd.security import NbdListen
    from ophiura.nbd.tls import TlsConfigError

    if isinstance(config.nbd, NbdListen):
        try:
            config.nbd.security.server_context()
        except TlsConfigError as exc:
            raise click.ClickException(str(exc)) from None


def _call(control: str, secret_file: Path | None, op: str, **args: Any) -> Any:
    try:
        host, port = parse_host_port(control, "--control")
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--control") from exc
    try:
        return asyncio.run(control_call(host, port, _secret(secret_file), op, **args))
    except ControlError as exc:
        raise click.ClickException(str(exc)) from exc


_control = click.option(
    "--control",
    default=_DEFAULT_CONTROL,
    show_default=True,
    metavar="HOST:PORT",
    help="The HE's control API.",
)
_secret_opt = click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Shared secret (default $XDG_CONFIG_HOME/ophiura/secret).",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.command("takeover")
@_control
@_secret_opt
@_json
def takeover(control: str, secret_file: Path | None, as_json: bool) -> None:
    """Make a standby HE active: raise the epochs (fencing the old HE), recover, serve."""
    t0 = time.monotonic()
    result = _call(control, secret_file, "takeover")
    elapsed = time.monotonic() - t0
    if as_json:
        click.echo(json.dumps({**result, "command_s": round(elapsed, 4)}, indent=2))
        return
    click.echo(f"active after {result['activated_s']:.3f}s (command {elapsed:.3f}s)")
    for name, info in result["volumes"].items():
        click.echo(f"  {name}: epoch {info['epoch']}, last seq {info['seq']}")
    for err in result.get("errors", []):
        click.secho(f"  error: {err}", fg="red")


def render_status(st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = f"HE {st['role']}  N={st['n']} Q={st['quorum']}"
    fe = st["frontends"]
    head += f"  iscsi={fe['iscsi'] or '-'} nbd={fe['nbd'] or '-'} control={fe['control']}"
    console.print(head)
    if st.get("warning"):
        console.print(f"[bold red]WARNING: {st['warning']}[/]")
    for warning in st.get("exposure", []):
        console.print(f"WARNING: {warning}", style="bold yellow", markup=False, highlight=False)
    if st.get("takeover"):
        t = st["takeover"]
        first = "-" if t["first_io_s"] is None else f"{t['first_io_s']:.3f}s"
        console.print(f"takeover: active after {t['activated_s']:.3f}s, first I/O after {first}")
    ses = Table(title="storage elements")
    for col in ("SE", "address", "connected", "RTT ms", "link", "last error"):
        ses.add_column(col)
    for s in st["ses"]:
        link = f"{s['delay_ms']:g}ms" + (f" {s['rate_mbit']:g}Mbit" if s["rate_mbit"] else "")
        rtt = "-" if s["rtt_ms"] is None else f"{s['rtt_ms']:.2f}"
        ses.add_row(
            s["name"],
            s["address"],
            "yes" if s["connected"] else "[red]no[/]",
            rtt,
            link,
            s["last_error"] or "",
        )
    console.print(ses)
    for v in st["volumes"]:
        mode = (
            "[red]FENCED[/]" if v["fenced"] else "[yellow]read-only[/]" if v["read_only"] else "rw"
        )
        q, c = v["queue"], v["cache"]
        table = Table(
            title=(
                f"volume {v['name']} {format_size(v['size'])} {mode} epoch {v['epoch']} "
                f"seq {v['latest_seq']} (acked {v['acked_seq']})  queue {q['fill'] * 100:.1f}% "
                f"({q['entries']} writes)  cache hit {c['hit_ratio'] * 100:.1f}%"
            )
        )
        for col in ("SE", "state", "acked seq", "progress", "RTT ms", "recoveries", "last error"):
            table.add_column(col)
        for r in v["ses"]:
            done, total = r["progress"]
            progress = f"{done}/{total}" if r["state"].startswith("recovering") else ""
            colour = {"up": "green", "failed": "red", "fenced": "red"}.get(r["state"], "yellow")
            rtt = "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:.2f}"
            recs = ", ".join(f"{k}={n}" for k, n in sorted(r["recoveries"].items()))
            table.add_row(
                r["name"],
                f"[{colour}]{r['state']}[/]",
                str(r["acked_seq"]),
                progress,
                rtt,
                recs,
                r["last_error"] or "",
            )
        console.print(table)


@click.command("status")
@_control
@_secret_opt
@_json
def status(control: str, secret_file: Path | None, as_json: bool) -> None:
    """HE, SE, volume and recovery state of a running HE."""
    st = _call(control, secret_file, "status")
    if as_json:
        click.echo(json.dumps(st, indent=2))
    else:
        render_status(st)


@click.group("volume")
def volume() -> None:
    """Create, list, resize, delete replicated volumes on a running HE."""


def _size(value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@volume.command("create")
@click.argument("name")
@click.argument("size")
@_control
@_secret_opt
@_json
def volume_create(
    name: str, size: str, control: str, secret_file: Path | None, as_json: bool
) -> None:
    result = _call(control, secret_file, "volume-create", name=name, size=_size(size))
    click.echo(json.dumps(result, indent=2) if as_json else f"created {name}")


@volume.command("list")
@_control
@_secret_opt
@_json
def volume_list(control: str, secret_file: Path | None, as_json: bool) -> None:
    result = _call(control, secret_file, "volume-list")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for v in result:
        ro = " (read-only)" if v["read_only"] else ""
        click.echo(f"{v['name']}\t{format_size(v['size'])}\t{v['iqn']}{ro}")


@volume.command("resize")
@click.argument("name")
@click.argument("size")
@_control
@_secret_opt
@_json
def volume_resize(
    name: str, size: str, control: str, secret_file: Path | None, as_json: bool
) -> None:
    result = _call(control, secret_file, "volume-resize", name=name, size=_size(size))
    click.echo(json.dumps(result, indent=2) if as_json else f"resized {name} to {size}")


@volume.command("delete")
@click.argument("name")
@_control
@_secret_opt
@_json
def volume_delete(name: str, control: str, secret_file: Path | None, as_json: bool) -> None:
    result = _call(control, secret_file, "volume-delete", name=name)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"deleted {name} on {', '.join(result['deleted_on']) or 'no SE'}")
    for err in result["errors"]:
        click.secho(f"  not deleted on {err}", fg="yellow")
