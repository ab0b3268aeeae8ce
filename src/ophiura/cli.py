"""The `ophiura` command."""

from __future__ import annotations

import click

from ophiura import __version__


@click.group()
@click.version_option(__version__)
def main() -> None:
    """ophiura: high availability for services and their data."""
