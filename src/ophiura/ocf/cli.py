"""`ophiura ocf`: install the Pacemaker OCF agents (ocf:ophiura:target, ...:replicated-volume)."""

from __future__ import annotations

from pathlib import Path

import click

from ophiura.ocf.install import DEFAULT_OCF_ROOT


@click.group()
def ocf() -> None:
    """Pacemaker OCF resource agents (ocf:ophiura:target, ocf:ophiura:replicated-volume)."""


_prefix = click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Staging root (like DESTDIR) under which OCF_ROOT is created.",
)
_root = click.option(
    "--ocf-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OCF_ROOT,
    show_default=True,
    help="OCF_ROOT; agents go to OCF_ROOT/resource.d/ophiura/.",
)


@ocf.command("install")
@_prefix
@_root
def install_cmd(prefix: Path | None, ocf_root: Path) -> None:
    """Install the agents into OCF_ROOT/resource.d/ophiura/ for this Python and ophiura."""
    from ophiura.ocf.install import install

    if not ocf_root.is_absolute():
        raise click.BadParameter("must be an absolute path", param_hint="--ocf-root")
    try:
        paths = install(prefix, ocf_root)
    except OSError as exc:
        raise click.ClickException(
            f"cannot install: {exc.strerror or exc}: {exc.filename}"
        ) from None
    for path in paths:
        click.echo(path)


@ocf.command("uninstall")
@_prefix
@_root
def uninstall_cmd(prefix: Path | None, ocf_root: Path) -> None:
    """Remove the agents installed by `ophiura ocf install`."""
    from ophiura.ocf.install import uninstall

    for path in uninstall(prefix, ocf_root):
        click.echo(f"removed {path}")


@ocf.command("meta-data")
@click.argument("agent", type=click.Choice(["target", "replicated-volume"]))
def metadata_cmd(agent: str) -> None:
    """Print an agent's OCF meta-data."""
    from ophiura.ocf.install import agent_infos
    from ophiura.ocf.runner import metadata_xml

    click.echo(metadata_xml(agent_infos()[agent]), nl=False)
