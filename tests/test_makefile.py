"""The Makefile's install logic, read with `make -n` in a copy (nothing is installed):
`make demo` installs ophiura with only what it needs to run, `make test` the dev extra too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP_EXTRAS = re.compile(r"pip install -q -e '\.\[([a-z,]*)\]'")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _dry_run(where: Path, target: str) -> list[set[str]]:
    """The extras of every `pip install -e .[...]` that `make TARGET` would run."""
    done = subprocess.run(
        ["make", "-n", target],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    return [set(m.group(1).split(",")) for m in PIP_EXTRAS.finditer(done.stdout)]


def _extras() -> dict[str, list[str]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def test_demo_installs_no_test_or_bench_extra(copy: Path) -> None:
    installs = _dry_run(copy, "demo")
    assert installs == [{"fast"}]
    needed = {dep for extra in installs[0] for dep in _extras()[extra]}
    unwanted = {dep for extra in ("dev", "bench") for dep in _extras()[extra]}
    assert not needed & unwanted


def test_test_still_installs_the_dev_extra(copy: Path) -> None:
    assert {"dev", "fast"} in _dry_run(copy, "test")
    assert {"dev", "fast"} in _dry_run(copy, "lint")


def test_an_existing_venv_gets_only_the_missing_part(copy: Path) -> None:
    """After `make demo`, `make test` adds the dev extra and does not rebuild the venv; after
    that, neither reinstalls anything until pyproject.toml changes."""
    (copy / ".venv" / "bin").mkdir(parents=True)
    (copy / ".venv" / "bin" / "ophiura").touch()
    os.utime(copy / "pyproject.toml", (1_000_000_000, 1_000_000_000))
    assert _dry_run(copy, "demo") == []
    assert _dry_run(copy, "test") == [{"dev", "fast"}]
    (copy / ".venv" / ".dev-installed").touch()
    assert _dry_run(copy, "test") == []
    assert _dry_run(copy, "demo") == []
