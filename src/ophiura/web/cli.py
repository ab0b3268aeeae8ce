"""`ophiura web token` / `ophiura web new-user`: the REST API's bearer tokens for operators."""

from __future__ import annotations

import click

from ophiura.web.auth import ADMIN, READ, cluster_token, new_token, token_sha256


@click.group()
def web() -> None:
    """Tokens for the REST API and dashboard (served by `ophiura node` when http is set)."""


@web.command()
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Cluster TOML ($OPHIURA_CLUSTER_CONFIG).",
)
def token(config_path: str | None) -> None:
    """Print the cluster token (admin role), derived from the cluster secret."""
    from ophiura.cluster.cli import _default_config, _load

    click.echo(cluster_token(_load(config_path or _default_config())))


@web.command("new-user")
@click.argument("name")
@click.option("--role", type=click.Choice([ADMIN, READ]), default=ADMIN, show_default=True)
def new_user(name: str, role: str) -> None:
    """Make a random token for NAME; print it and the lines for the cluster TOML."""
    tok = new_token()
    click.echo(f"token for {name} (give it to them; it is not stored anywhere): {tok}")
    click.echo("add to the cluster TOML on every node:")
    click.echo("[cluster.api_users]")
    click.echo(f'{name} = {{ token_sha256 = "{token_sha256(tok)}", role = "{role}" }}')
