"""`examples/`: the files a reader copies to real machines must be accepted by the tools that
will read them there (`ophiura cluster validate`, the HE's config loader, systemd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ophiura.cluster.config import load
from ophiura.nbd.security import NbdListen
from ophiura.replication.he.config import build_config, load_toml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
OPT_BIN = "/opt/ophiura/venv/bin"


def _with_secret(tmp_path: Path, name: str = "cluster.toml") -> Path:
    """The example with its secret file path pointed at one that exists (0600): validate reads
    the secret, which on a real node is created at install time (examples/README.md)."""
    secret = tmp_path / "cluster.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    text = (EXAMPLES / name).read_text()
    assert "/etc/ophiura/cluster.secret" in text
    path = tmp_path / name
    path.write_text(text.replace("/etc/ophiura/cluster.secret", str(secret)))
    return path


def test_cluster_example_validates(tmp_path: Path) -> None:
    """`ophiura cluster validate examples/cluster.toml`, with root's PATH (fence agents live
    in /usr/sbin; validate runs as root on a node). Without Debian's fence-agents installed
    (an ordinary user's `make test` installs no tools), the IPMI agent it names is the only
    thing validate may and must complain about."""
    path = _with_secret(tmp_path)
    sbin = ":".join(("/usr/local/sbin", "/usr/sbin", "/sbin"))
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', '/usr/bin:/bin')}:{sbin}"}
    res = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "cluster", "validate", str(path)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    out = res.stdout + res.stderr
    if shutil.which("fence_ipmilan", path=env["PATH"]) is None:
        problems = [line for line in out.splitlines() if line.startswith("error:")]
        assert res.returncode != 0 and len(problems) == 3, out
        assert all("agent fence_ipmilan not found" in line for line in problems), out
    else:
        assert res.returncode == 0, out
        assert "valid (3 nodes, 2 links, 1 hierarchies" in res.stdout
    cfg = load(path)
    h = cfg.hierarchies["records"]
    assert list(h.resources) == ["vol", "ip", "app"] and h.ownable == "vol"
    assert h.resources["vol"].resource.kind == "replicated-volume"
    assert h.resources["ip"].depends_on == ("vol",) and h.resources["app"].depends_on == ("ip",)
    assert len(cfg.links) == 2 and h.failback == "manual"
    # the HE config the volume resource names is this directory's he.toml
    assert h.resources["vol"].resource.params["config"] == "/etc/ophiura/he.toml"


def test_postgres_example_validates(tmp_path: Path) -> None:
    """`ophiura cluster validate examples/postgres.toml`: [replicated-volume -> attach -> fs ->
    ip -> ocf:heartbeat:pgsql], the device `attach` publishes being what `fs` mounts."""
    path = _with_secret(tmp_path, "postgres.toml")
    res = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "cluster", "validate", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    out = res.stdout + res.stderr
    if not Path("/usr/lib/ocf/resource.d/heartbeat/pgsql").exists():
        problems = [line for line in out.splitlines() if line.startswith("error:")]
        assert res.returncode != 0 and len(problems) == 1 and "pgsql" in problems[0], out
    else:
        assert res.returncode == 0 and "valid (3 nodes, 2 links, 1 hierarchies" in out, out
    h = load(path).hierarchies["postgres"]
    kinds = [(name, r.resource.kind, r.depends_on) for name, r in h.resources.items()]
    assert kinds == [
        ("vol", "replicated-volume", ()),
        ("disk", "attach", ("vol",)),
        ("data", "fs", ("disk",)),
        ("ip", "ip", ("data",)),
        ("db", "ocf:heartbeat:pgsql", ("ip",)),
    ]
    assert h.ownable == "vol" and h.shared_data
    params = {name: r.resource.params for name, r in h.resources.items()}
    assert params["data"]["device"] == params["disk"]["link"]
    assert params["vol"]["config"] == "/etc/ophiura/he-postgres.toml"
    he = build_config(load_toml(EXAMPLES / "he-postgres.toml"))
    assert isinstance(he.nbd, NbdListen) and f"{he.nbd.host}:{he.nbd.port}" == (
        f"{params['disk']['address']}:{params['disk']['port']}"
    )
    assert [v[0] for v in he.volumes] == [params["disk"]["export"]]


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
