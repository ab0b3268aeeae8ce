"""Man pages generated from the CLI's help (ophiura.manpages, `make man`): one page per
command, valid man(7) that groff and man render without a warning, carrying the help text."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ophiura.cli import main as cli_main
from ophiura.manpages import escape, main, pages, walk, write_pages

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pagedir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man") / "man1"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ophiura.manpages", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "man pages in" in done.stdout
    return out


def test_one_page_per_command(pagedir: Path) -> None:
    expected = {path.replace(" ", "-") + ".1" for path, _ in walk(cli_main, "ophiura")}
    assert {"ophiura.1", "ophiura-target.1", "ophiura-cluster-config-diff.1"} <= expected
    assert {p.name for p in pagedir.iterdir()} == expected


def test_pages_carry_the_structure_and_the_help(pagedir: Path) -> None:
    for page in pagedir.iterdir():
        text = page.read_text()
        name = page.name.removesuffix(".1")
        assert text.startswith(f'.TH "{name.upper()}" "1" ')
        for section in (".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS"):
            assert f"\n{section}\n" in text, (page.name, section)
        assert f"\n{escape(name)} \\- " in text
    target = (pagedir / "ophiura-target.1").read_text()
    assert "\n.TP\n\\fB\\-\\-backing FILE\\fR\n" in target
    top = (pagedir / "ophiura.1").read_text()
    assert "\n.SH COMMANDS\n" in top
    assert "\\fBophiura\\-cluster\\fR(1)" in top
    avail = (pagedir / "ophiura-avail.1").read_text()
    assert "\n.nf\n" in avail  # click's \b paragraph kept verbatim


def test_pages_render_without_warnings(pagedir: Path) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (the structure test still runs)")
    for page in sorted(pagedir.iterdir()):
        done = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0 and not done.stderr, (page.name, done.stderr)


def test_man_shows_the_options(pagedir: Path) -> None:
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    env = {**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "", "PAGER": "cat"}
    done = subprocess.run(
        ["man", "-l", str(pagedir / "ophiura-target.1")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    plain = done.stdout
    assert "OPHIURA-TARGET(1)" in plain
    assert "--backing" in plain.replace("\u2010", "-")
    assert "Serve BACKING as LUN 0" in plain


def test_escape_keeps_roff_requests_out_of_text() -> None:
    assert escape(".hidden\n'also\nok") == "\\&.hidden\n\\&'also\nok"
    assert escape("a\\b --x") == "a\\eb \\-\\-x"


def test_pages_are_built_from_the_help_of_any_click_tree() -> None:
    @click.group()
    def tool() -> None:
        """A tool."""

    @tool.command()
    @click.option("--flag", is_flag=True, help="Turn .it on.")
    def sub(flag: bool) -> None:
        """Do the thing."""

    built = pages(tool, prog="tool", date="2026-12-07")
    assert set(built) == {"tool.1", "tool-sub.1"}
    assert "\\fB\\-\\-flag\\fR\nTurn .it on." in built["tool-sub.1"]
    assert '"2026-12-07"' in built["tool.1"]


def test_bad_usage_and_unwritable_dir_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: python -m ophiura.manpages OUTDIR")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([str(blocker / "man1")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ophiura.manpages: ") and "\n" not in err
    assert write_pages(tmp_path / "ok")
