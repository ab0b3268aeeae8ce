"""Man pages generated from the CLI's own help: `python -m ophiura.manpages OUTDIR`.

One page per command in the click tree (`ophiura.1`, `ophiura-target.1`,
`ophiura-cluster-status.1`, ...), written in the man(7) macros so that `man -l`, groff and
mandoc render them. They are generated rather than written because the help strings are the
single source: a page written by hand would drift from `--help` with the first new option.
Pure functions build the text; only `write_pages` touches the disk.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from ophiura import __version__

SECTION = "1"
MANUAL = "ophiura manual"


def escape(text: str) -> str:
    """Text safe in a roff line: backslashes and hyphens escaped, no line that a leading
    `.` or `'` would turn into a request."""
    out = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").split("\n"):
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _paragraphs(help_text: str) -> Iterator[tuple[bool, str]]:
    """Help text as (verbatim, text) paragraphs: click's `\\b` marks a paragraph it does not
    rewrap, which must stay verbatim in the page too."""
    for block in inspect.cleandoc(help_text).split("\n\n"):
        if not block.strip():
            continue
        if block.startswith("\b\n") or block == "\b":
            yield True, block.removeprefix("\b").strip("\n")
        else:
            yield False, " ".join(line.strip() for line in block.splitlines())


def walk(
    command: click.Command, name: str, parent: click.Context | None = None
) -> Iterator[tuple[str, click.Context]]:
    """Every command under `command` (itself first) with its full name and a context."""
    ctx = click.Context(command, info_name=name, parent=parent)
    yield ctx.command_path, ctx
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, sub_name, ctx)


def page_name(command_path: str) -> str:
    """`ophiura cluster status` -> `ophiura-cluster-status`."""
    return command_path.replace(" ", "-")


def render(ctx: click.Context, date: str, version: str = __version__) -> str:
    """The man(7) source of one command's page."""
    cmd = ctx.command
    name = page_name(ctx.command_path)
    # The NAME line is what whatis/apropos show: the first sentence of the help, without a
    # leading "ophiura:" that would repeat the name.
    short = cmd.get_short_help_str(limit=300).removeprefix(f"{ctx.command_path}: ")
    lines = [
        f'.TH "{name.upper()}" "{SECTION}" "{date}" "ophiura {version}" "{MANUAL}"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(short)}",
        ".SH SYNOPSIS",
        f".B {escape(ctx.command_path)}",
    ]
    pieces = cmd.collect_usage_pieces(ctx)
    if pieces:
        # `\:` lets a long choice list ([a|b|c...]) break after a bar instead of overflowing.
        lines.append(escape(" ".join(pieces)).replace("|", "|\\:"))
    if cmd.help:
        lines.append(".SH DESCRIPTION")
        first = True
        for verbatim, text in _paragraphs(cmd.help):
            if not first:
                lines.append(".PP")
            first = False
            if verbatim:
                lines += [".nf", ".RS 2", escape(text), ".RE", ".fi"]
            else:
                lines.append(escape(text))
    options = [p.get_help_record(ctx) for p in cmd.get_params(ctx) if isinstance(p, click.Option)]
    options = [record for record in options if record is not None]
    if options:
        lines.append(".SH OPTIONS")
        for opts, help_text in options:
            lines += [".TP", f"\\fB{escape(opts)}\\fR"]
            lines.append(escape(help_text) if help_text else "")
    subs: list[tuple[str, click.Command]] = []
    if isinstance(cmd, click.Group):
        for sub_name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                subs.append((sub_name, sub))
    if subs:
        lines.append(".SH COMMANDS")
        for sub_name, sub in subs:
            sub_page = page_name(f"{ctx.command_path} {sub_name}")
            lines += [
                ".TP",
                f"\\fB{escape(sub_name)}\\fR",
                f"{escape(sub.get_short_help_str(limit=300))} See \\fB{escape(sub_page)}\\fR(1).",
            ]
    see_also = []
    if ctx.parent is not None:
        see_also.append(page_name(ctx.parent.command_path))
    see_also += [page_name(f"{ctx.command_path} {sub_name}") for sub_name, _ in subs]
    if see_also:
        lines.append(".SH SEE ALSO")
        lines.append(",\n".join(f"\\fB{escape(p)}\\fR({SECTION})" for p in see_also))
    return "\n".join(lines) + "\n"


def build_date() -> str:
    """The date printed in the pages: `$SOURCE_DATE_EPOCH` when set, so builds reproduce."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%d")


def pages(root: click.Command, prog: str = "ophiura", date: str | None = None) -> dict[str, str]:
    """File name -> page source for every command under `root`."""
    day = date or build_date()
    return {f"{page_name(path)}.{SECTION}": render(ctx, day) for path, ctx in walk(root, prog)}


def write_pages(outdir: Path, root: click.Command | None = None) -> list[Path]:
    """Write every page into `outdir` (created if missing) and return the paths."""
    if root is None:
        from ophiura.cli import main as root
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in pages(root).items():
        path = outdir / file_name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m ophiura.manpages OUTDIR`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m ophiura.manpages OUTDIR", file=sys.stderr)
        return 2
    try:
        written = write_pages(Path(args[0]))
    except OSError as exc:
        print(f"ophiura.manpages: {args[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{len(written)} man pages in {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
