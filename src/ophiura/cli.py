"""The `ophiura` command: thin wrappers that parse options and hand over to the modules."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import click

from ophiura import __version__
from ophiura.causes import describe
from ophiura.sizes import parse_size


def _setup_logging(verbose: int) -> None:
    from ophiura.logsetup import configure

    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    configure(level)  # syslog priority prefixes and no timestamps when stderr is the journal


class SizeParam(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class HostPortParam(click.ParamType):
    name = "host:port"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, tuple):
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            self.fail(f"{value!r} is not HOST:PORT (example: 127.0.0.1:3260)", param, ctx)
        return host.strip("[]"), int(port)


def _chap(value: str | None):  # type: ignore[no-untyped-def]
    from ophiura.iscsi.chap import Credentials

    if value is None:
        return None
    user, sep, secret = value.partition(":")
    if not sep or not user or not secret:
        raise click.BadParameter(f"{value!r} is not USER:SECRET", param_hint="--chap")
    return Credentials(user, secret)


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """ophiura: high availability for services and their data."""
    ctx.obj = {"verbose": verbose}
    _setup_logging(verbose)


_SERVING_OPTIONS = (
    "backing", "size", "listen", "iqn", "thin", "chap", "mutual_chap", "state_dir", "block_size",
    "nbd", "nbd_export",
)  # fmt: skip


@main.group(invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file: several targets, LUNs, ACLs, CHAP, NBD (docs/target.md).",
)
@click.option(
    "--backing",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Backing file (created sparse if missing) or block device.",
)
@click.option("--size", type=SizeParam(), help="LUN size, e.g. 10G (default: the file's size).")
@click.option("--listen", type=HostPortParam(), default="127.0.0.1:3260", show_default=True)
@click.option("--iqn", default=None, help="Target name (default iqn.2026-11.io.ophiura:disk).")
@click.option("--thin", is_flag=True, help="Thin provisioning: UNMAP punches holes.")
@click.option("--chap", "chap", metavar="USER:SECRET", help="Require CHAP from initiators.")
@click.option("--mutual-chap", metavar="USER:SECRET", help="Prove ourselves to initiators too.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where persistent reservations (APTPL) live (default: BACKING.state/).",
)
@click.option("--block-size", type=click.Choice(["512", "4096"]), default="512", show_default=True)
@click.option(
    "--nbd",
    type=HostPortParam(),
    default=None,
    help="Also serve BACKING over NBD on HOST:PORT (e.g. 127.0.0.1:10809).",
)
@click.option("--nbd-export", default="disk", show_default=True, help="NBD export name.")
@click.option(
    "--admin-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Status socket for `target show` (default /run/ophiura/target.sock, if free).",
)
@click.option(
    "--tls-certificates",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="NBD TLS: DIR with ca-cert.pem, server-cert.pem, server-key.pem (as nbdkit/qemu-nbd).",
)
@click.option(
    "--tls",
    "tls_mode",
    type=click.Choice(["off", "on", "require"]),
    default=None,
    help="NBD TLS mode (default: require with --tls-certificates, else off).",
)
@click.option(
    "--tls-verify-peer",
    is_flag=True,
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
    default=None,
    metavar="N",
    help="Close NBD connections beyond N at once (default: no cap).",
)
@click.pass_context
def target(
    ctx: click.Context,
    config_path: Path | None,
    backing: Path | None,
    size: int | None,
    listen: tuple[str, int],
    iqn: str | None,
    thin: bool,
    chap: str | None,
    mutual_chap: str | None,
    state_dir: Path | None,
    block_size: str,
    nbd: tuple[str, int] | None,
    nbd_export: str,
    admin_socket: Path | None,
    tls_certificates: Path | None,
    tls_mode: str | None,
    tls_verify_peer: bool,
    nbd_allow: tuple[str, ...],
    nbd_max_connections: int | None,
) -> None:
    """Serve BACKING as LUN 0 of an iSCSI target (or the targets of --config FILE) until
    SIGTERM or SIGINT. `ophiura target show` lists a running target's state."""
    from ophiura.serve import run_event_loop
    from ophiura.target_config import DEFAULT_ADMIN_SOCKET, TargetConfigError, load
    from ophiura.target_daemon import DEFAULT_IQN, TargetConfig, TargetDaemon

    given = [
        name
        for name in _SERVING_OPTIONS
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    if ctx.invoked_subcommand is not None:
        if given or config_path or admin_socket:
            raise click.UsageError(f"`target {ctx.invoked_subcommand}` takes its own options")
        return
    # NBD access (TLS, allow-list, cap): for --nbd, or for the --config file's [nbd] listener
    security_options = (tls_certificates, tls_mode, tls_verify_peer, nbd_allow, nbd_max_connections)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    if config_path is not None:
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise click.UsageError(f"--config and {flags}: put these in the file instead")
        try:
            config = load(config_path)
        except TargetConfigError as exc:
            raise click.ClickException(str(exc)) from None
        if admin_socket is not None:
            config = dataclasses.replace(
                config, admin_socket=admin_socket, admin_socket_explicit=True
            )
        security = _nbd_security(config.nbd, *security_options)  # for the file's [nbd]
        if security is not None:
            config = dataclasses.replace(config, nbd_security=security)
        _serve(TargetDaemon(config), run_event_loop)
        return
    if backing is None:
        raise click.UsageError("give --backing FILE (one target) or --config FILE.toml")
    nbd_security = _nbd_security(nbd, *security_options)
    credentials = _chap(chap)
    if mutual_chap:
        if credentials is None:
            raise click.BadParameter("--mutual-chap needs --chap", param_hint="--mutual-chap")
        mutual = _chap(mutual_chap)
        credentials = type(credentials)(
            credentials.user, credentials.secret, mutual.user, mutual.secret
        )
    if not backing.parent.is_dir():
        raise click.BadParameter(
            f"{backing.parent} is not a directory (not created: a typo would go unnoticed)",
            param_hint="--backing",
        )
    if size is None and not backing.exists():
        raise click.BadParameter(f"{backing} does not exist: give --size", param_hint="--size")
    single = TargetConfig(
        backing=backing,
        size=size,
        host=listen[0],
        port=listen[1],
        iqn=iqn or DEFAULT_IQN,
        thin=thin,
        chap=credentials,
        state_dir=state_dir,
        block_size=int(block_size),
        nbd=nbd,
        nbd_export=nbd_export,
        admin_socket=admin_socket or DEFAULT_ADMIN_SOCKET,
        admin_socket_explicit=admin_socket is not None,
        nbd_security=nbd_security,
    )
    _serve(TargetDaemon(single), run_event_loop)


def _serve(daemon, run_event_loop) -> None:  # type: ignore[no-untyped-def]
    from ophiura.scsi.pr_state import PrStateError

    try:
        run_event_loop(daemon.run_until_signalled)
    except (OSError, ValueError, PrStateError) as exc:
        raise click.ClickException(describe(exc)) from None


@target.command("show")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The target's status socket (default /run/ophiura/target.sock).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Find the socket in this target TOML file (its admin_socket).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys).")
def target_show(socket_path: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Targets, LUNs, sessions (initiator, address, since) and reservations of a running
    target."""
    import json

    from ophiura.target_admin import TargetAdminError, query
    from ophiura.target_config import DEFAULT_ADMIN_SOCKET, TargetConfigError, load
    from ophiura.target_show import render

    if socket_path is not None and config_path is not None:
        raise click.UsageError("give --socket or --config, not both")
    path = socket_path or DEFAULT_ADMIN_SOCKET
    if config_path is not None:
        try:
            config = load(config_path)
        except TargetConfigError as exc:
            raise click.ClickException(str(exc)) from None
        if config.admin_socket is None:
            raise click.ClickException(f'{config_path}: admin_socket is off ("")')
        path = config.admin_socket
    try:
        state = query(path)
    except TargetAdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(state, indent=2, sort_keys=True) if as_json else render(state))


def _nbd_security(  # type: ignore[no-untyped-def]
    nbd: tuple[str, int] | None,
    certificates: Path | None,
    mode: str | None,
    verify_peer: bool,
    allow: tuple[str, ...],
    max_connections: int | None,
):
    """`ophiura target`'s NBD access options as an NbdSecurity, checked before anything starts
    (the certificates load here: a wrong directory is one line, not a failed daemon)."""
    from ophiura.nbd.security import NbdSecurity, NbdSecurityError
    from ophiura.nbd.tls import TlsConfigError

    given = certificates is not None or mode is not None or verify_peer or allow
    if nbd is None:
        if given or max_connections is not None:
            raise click.UsageError("the NBD TLS/allow/connection options need --nbd HOST:PORT")
        return None
    try:
        security = NbdSecurity.from_options(
            tls=mode,
            certificates=certificates,
            verify_peer=verify_peer,
            allow=allow,
            max_connections=max_connections,
        )
        security.server_context()
    except NbdSecurityError as exc:
        raise click.UsageError(str(exc)) from None
    except TlsConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return security


def _int(value: str) -> int:
    try:
        return int(value, 0)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a number (use 0x1 or 1)") from exc


@main.command("pr")
@click.argument("url")
@click.argument(
    "action",
    type=click.Choice(
        [
            "read-keys",
            "read-reservation",
            "read-full-status",
            "report-capabilities",
            "register",
            "register-ignore",
            "reserve",
            "release",
            "clear",
            "preempt",
            "preempt-abort",
        ]
    ),
)
@click.option("--key", default="0", help="Our reservation key (hex 0x.. or decimal).")
@click.option(
    "--new-key", "new_key", default=None, help="register: the key to set (0 = unregister)."
)
@click.option("--victim", default=None, help="preempt/preempt-abort: the key to remove.")
@click.option(
    "--type",
    "pr_type",
    default=None,
    help="Reservation type: we, ea, wero, earo, wear, eaar (or the long names).",
)
@click.option("--aptpl", is_flag=True, help="Persist through power loss (register).")
@click.option("--initiator-name", default=None, help="Our IQN (default: from the hostname).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pr_command(
    url: str,
    action: str,
    key: str,
    new_key: str | None,
    victim: str | None,
    pr_type: str | None,
    aptpl: bool,
    initiator_name: str | None,
    as_json: bool,
) -> None:
    """PERSISTENT RESERVE IN/OUT on an iSCSI LUN (sg_persist for iscsi:// URLs).

    URL is iscsi://[user[%secret]@]host[:port]/target-iqn/lun.
    """
    import asyncio
    import json

    from ophiura import pr_tool
    from ophiura.iscsi.initiator import IscsiError

    type_code = 0
    if pr_type is not None:
        if pr_type.lower() not in pr_tool.TYPE_NAMES:
            raise click.BadParameter(f"unknown type {pr_type!r}", param_hint="--type")
        type_code = int(pr_tool.TYPE_NAMES[pr_type.lower()])
    elif action in ("reserve", "release", "preempt", "preempt-abort"):
        raise click.BadParameter(f"{action} needs --type", param_hint="--type")
    if action in ("preempt", "preempt-abort") and victim is None:
        raise click.BadParameter(f"{action} needs --victim KEY", param_hint="--victim")
    sa_key = new_key if action.startswith("register") else victim
    request = pr_tool.PrRequest(
        url=url,
        action=action,
        key=_int(key),
        sa_key=_int(sa_key) if sa_key else 0,
        pr_type=type_code,
        aptpl=aptpl,
        initiator_name=initiator_name or "",
    )
    try:
        result = asyncio.run(pr_tool.run(request))
    except pr_tool.PrToolError as exc:
        raise click.ClickException(str(exc)) from exc
    except (IscsiError, OSError, ValueError, TimeoutError) as exc:
        raise click.ClickException(f"{url}: {describe(exc)}") from exc
    click.echo(json.dumps(result, indent=2) if as_json else pr_tool.render_text(result))


@main.command()
@click.option("--headless", is_flag=True, help="Plain timestamped lines, no live view.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report as JSON to this file.",
)
@click.option(
    "--netns/--no-netns",
    default=None,
    help="Nodes in network namespaces with a floating IP (default: when root).",
)
@click.option("--keep", is_flag=True, help="Keep the temp dir (logs, configs) afterwards.")
@click.option("--no-dashboard", is_flag=True, help="Do not start the REST API and dashboard.")
@click.option(
    "--pace",
    type=click.FloatRange(0.2, 5.0),
    default=1.0,
    show_default=True,
    help="Scale the time spent watching each phase.",
)
@click.option(
    "--linger", is_flag=True, help="After the report, keep the cluster up (dashboard) until Ctrl-C."
)
@click.option(
    "--app",
    type=click.Choice(["record", "postgres"]),
    default="record",
    show_default=True,
    help="The service failed over: the demo's record app, or PostgreSQL 15 with pgbench "
    "(root, network namespaces, PostgreSQL 15 installed).",
)
@click.option(
    "--target",
    is_flag=True,
    help="Instead: the SCSI target tour (iSCSI LUN, persistent reservations).",
)
def demo(
    headless: bool,
    json_path: Path | None,
    netns: bool | None,
    keep: bool,
    no_dashboard: bool,
    pace: float,
    linger: bool,
    app: str,
    target: bool,
) -> None:
    """The whole system on this machine: 3 SEs, 3 cluster nodes, a record app, a client that
    writes records; an SE and the active node are killed, the node comes back, a switchover;
    then every acknowledged record is checked. Exit 1 if any was lost. With --app postgres:
    PostgreSQL 15 on the replicated volume, a ledger client and pgbench instead."""
    if target:
        from ophiura.demo import target as target_tour

        raise SystemExit(target_tour.main())
    from ophiura.demo import Options, run

    raise SystemExit(
        run(
            Options(
                headless=headless,
                json_path=json_path,
                netns=netns,
                keep=keep,
                dashboard=not no_dashboard,
                pace=pace,
                linger=linger,
                app=app,
            )
        )
    )


from ophiura.replication.se.cli import se  # noqa: E402

main.add_command(se)

from ophiura.replication.he.cli import he, status, takeover, volume  # noqa: E402

main.add_command(he)
main.add_command(takeover)
main.add_command(status)
main.add_command(volume)

from ophiura.cluster.cli import cluster, node  # noqa: E402

main.add_command(cluster)
main.add_command(node)

from ophiura.web.cli import web  # noqa: E402

main.add_command(web)

from ophiura.availability.cli import avail  # noqa: E402

main.add_command(avail)

from ophiura.torture.cli import torture  # noqa: E402

main.add_command(torture)

from ophiura.ocf.cli import ocf  # noqa: E402

main.add_command(ocf)

if __name__ == "__main__":
    main()
