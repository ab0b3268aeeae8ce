"""`ophiura se`: run one storage element until SIGTERM/SIGINT (then exit 0)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ophiura.metrics_http import MetricsListenError, MetricsServer
from ophiura.replication.wire.secret import SecretError, load_secret
from ophiura.sizes import parse_size

log = logging.getLogger(__name__)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (example: 127.0.0.1:7700)")
    return host.strip("[]"), int(port)


def _size(value: str, what: str) -> int:
    try:
        return parse_size(value.removesuffix("/s"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from exc


async def _serve(se_kwargs: dict[str, object], metrics: MetricsServer | None) -> None:
    from ophiura.replication.se import se_metrics
    from ophiura.replication.se.storage_element import StorageElement
    from ophiura.sdnotify import Notifier
    from ophiura.serve import stop_on_signals

    se = StorageElement(**se_kwargs)  # type: ignore[arg-type]
    sd = Notifier.from_environ()  # systemd Type=notify: READY=1 once serving
    stop = stop_on_signals()
    await se.start()
    # A line for scripts and tests that start us with port 0.
    print(f"SE {se.name} listening on {se.host}:{se.port}", flush=True)
    try:
        if metrics is not None:
            metrics.render = lambda: se_metrics.render(se)
            await metrics.start()
            print(f"SE {se.name} metrics on {metrics.host}:{metrics.port}", flush=True)
        sd.ready(f"serving {len(se.volumes)} volume(s) on {se.host}:{se.port}")
        await stop.wait()
    finally:
        sd.stopping("stopping")
        log.info("SE %s stopping", se.name)
        if metrics is not None:
            await metrics.stop()
        await se.stop()


@click.command("se")
@click.option("--name", required=True, help="This storage element's name (as HEs know it).")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for volume data files and metadata.",
)
@click.option("--listen", required=True, help="HOST:PORT to serve HEs and peer SEs on.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the replay logs (another disk; default DATA_DIR/logs).",
)
@click.option(
    "--log-size",
    default="256M",
    show_default=True,
    help="Replay log size per volume (bounds how long an outage replay can cover).",
)
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Shared secret (default $XDG_CONFIG_HOME/ophiura/secret, created 0600).",
)
@click.option(
    "--recovery-rate",
    default="0",
    show_default=True,
    help="Bytes/s a recovery may pull from a peer, e.g. 50M/s (0: unlimited).",
)
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    default=None,
    help="Serve Prometheus GET /metrics here (off by default; beyond loopback it needs a token).",
)
@click.option(
    "--metrics-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the bearer token /metrics requires (required unless loopback).",
)
def se(
    name: str,
    data_dir: Path,
    listen: str,
    log_dir: Path | None,
    log_size: str,
    secret_file: Path | None,
    recovery_rate: str,
    metrics: str | None,
    metrics_token_file: Path | None,
) -> None:
    """Run a StarFish storage element."""
    host, port = _host_port(listen)
    if not data_dir.parent.is_dir():
        raise click.ClickException(f"--data-dir: {data_dir.parent} is not a directory")
    try:
        secret = load_secret(secret_file)
    except SecretError as exc:
        raise click.ClickException(str(exc)) from exc
    kwargs: dict[str, object] = {
        "name": name,
        "data_dir": data_dir,
        "host": host,
        "port": port,
        "secret": secret,
        "log_dir": log_dir,
        "log_size": _size(log_size, "--log-size"),
        "recovery_rate": _size(recovery_rate, "--recovery-rate"),
    }
    server = None
    if metrics is not None:
        mhost, mport = _host_port(metrics)
        try:
            server = MetricsServer(lambda: "", mhost, mport, metrics_token_file)
        except MetricsListenError as exc:
            raise click.ClickException(str(exc)) from exc
    from ophiura.serve import run_event_loop

    try:
        run_event_loop(lambda: _serve(kwargs, server))
    except OSError as exc:
        raise click.ClickException(f"SE {name}: {exc.strerror or exc}") from exc
