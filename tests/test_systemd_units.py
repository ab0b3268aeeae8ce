"""The example systemd units: what they promise, working Documentation= links, and
`systemd-analyze verify` when systemd is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "examples" / "systemd"
INSTALLED_SRC = "file:///opt/ophiura/src/"  # where examples/README.md puts the source tree
VENV_BIN = "/opt/ophiura/venv/bin/"


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_a_unit_for_each_daemon() -> None:
    names = sorted(p.name for p in UNITS.glob("*.service"))
    assert names == [
        "ophiura-he.service",
        "ophiura-node.service",
        "ophiura-se@.service",
        "ophiura-target@.service",
    ]


def test_the_node_unit_is_type_notify_with_a_watchdog() -> None:
    d = directives(UNITS / "ophiura-node.service")
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["Restart"] == ["on-failure"]


def test_the_target_unit_is_type_notify_with_its_own_status_socket() -> None:
    d = directives(UNITS / "ophiura-target@.service")
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert "--admin-socket /run/ophiura/target-%i.sock" in d["ExecStart"][0]
    assert d["RuntimeDirectory"] == ["ophiura"] and d["RuntimeDirectoryPreserve"] == ["yes"]


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_documentation_links_name_files_that_exist(unit: str) -> None:
    links = " ".join(directives(UNITS / unit)["Documentation"]).split()
    assert links
    for link in links:
        assert link.startswith(INSTALLED_SRC), link
        assert (REPO / link.removeprefix(INSTALLED_SRC)).is_file(), f"{unit}: {link} is missing"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    fake = tmp_path / "bin" / "ophiura"  # verify insists that ExecStart's binary exists
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    paths = []
    for unit in sorted(UNITS.glob("*.service")):
        name = unit.name.replace("@.", "@example.")  # a template is verified as an instance
        copy = tmp_path / name
        copy.write_text(unit.read_text().replace(VENV_BIN, f"{fake.parent}/"))
        paths.append(str(copy))
    r = subprocess.run(
        [tool, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60
    )
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "ophiura" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_the_se_and_he_units_are_type_notify() -> None:
    """Both speak sd_notify (tests/replication/test_sd_notify.py): systemd knows when they serve."""
    for unit in ("ophiura-se@.service", "ophiura-he.service"):
        d = directives(UNITS / unit)
        assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"], unit
