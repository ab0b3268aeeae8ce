"""`examples/`: the files a reader copies to real machines must be accepted by the tools that
will read them there (`ophiura cluster validate`, the HE's config loader, systemd)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ophiura.cluster.config import load
from ophiura.replication.he_config import build_config, load_toml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
OPT_BIN = "/opt/ophiura/venv/bin"


def _with_secret(tmp_path: Path) -> Path:
    """The example with its secret file path pointed at one that exists (0600): validate reads
    the secret, which on a real node is created at install time (examples/README.md)."""
    secret = tmp_path / "cluster.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    text = (EXAMPLES / "cluster.toml").read_text()
    assert "/etc/ophiura/cluster.secret" in text
    path = tmp_path / "cluster.toml"
    path.write_text(text.replace("/etc/ophiura/cluster.secret", str(secret)))
    return path


def test_cluster_example_validates(tmp_path: Path) -> None:
    path = _with_secret(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "cluster", "validate", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid (3 nodes, 2 links, 1 hierarchies" in res.stdout
    cfg = load(path)
    h = cfg.hierarchies["records"]
    assert list(h.resources) == ["vol", "ip", "app"] and h.ownable == "vol"
    assert h.resources["vol"].resource.kind == "replicated-volume"
    assert h.resources["ip"].depends_on == ("vol",) and h.resources["app"].depends_on == ("ip",)
    assert len(cfg.links) == 2 and h.failback == "manual"
    # the HE config the volume resource names is this directory's he.toml
    assert h.resources["vol"].resource.params["config"] == "/etc/ophiura/he.toml"


def test_he_example_loads() -> None:
    cfg = build_config(load_toml(EXAMPLES / "he.toml"))
    assert cfg.quorum == 2 and len(cfg.ses) == 3
    assert not any(s.host.startswith("192.0.2.") for s in cfg.ses)


@pytest.mark.parametrize("unit", ["ophiura-node.service", "ophiura-se@.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    ophiura = Path(sys.executable).with_name("ophiura")
    if not ophiura.exists():
        pytest.skip("no ophiura script next to this interpreter")
    text = (EXAMPLES / "systemd" / unit).read_text()
    assert OPT_BIN in text
    name = unit.replace("@.", "@a.")
    (tmp_path / name).write_text(text.replace(OPT_BIN, str(ophiura.parent)))
    res = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / name)],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert res.returncode == 0 and not res.stderr.strip(), res.stdout + res.stderr
