"""The Pacemaker OCF agents, installed by `ophiura ocf install`, through Debian's `ocf-tester`
(resource-agents): `ocf:ophiura:target` on a temp backing file, `ocf:ophiura:replicated-volume`
running a real HE against three real `ophiura se` processes, all on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ophiura.cluster.agents.process import read_pidfile
from ophiura.ocf.install import install
from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import stop_all, wait_port_async

SECRET = b"0123456789abcdef-ocf-test-secret"
OCF_ROOT = Path("/usr/lib/ocf")


def _ocf_tester() -> str:
    path = shutil.which("ocf-tester")
    if path is None:
        pytest.skip("ocf-tester not installed (Debian package resource-agents)")
    return path


@pytest.fixture
def agents() -> Iterator[Path]:
    """The agents installed under a staging root `nobody` can read (ocf-tester checks that)."""
    root = Path(tempfile.mkdtemp(prefix="ophiura-ocf-"))
    try:
        root.chmod(0o755)
        paths = install(prefix=root)
        assert {p.name for p in paths} == {"target", "replicated-volume"}
        for p in paths:
            assert os.stat(p).st_mode & 0o777 == 0o755
        yield paths[0].parent
    finally:
        shutil.rmtree(root)


def _env(rsctmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OCF_ROOT=str(OCF_ROOT), HA_RSCTMP=str(rsctmp))
    return env


def ocf_tester(agent: Path, name: str, params: dict[str, str], rsctmp: Path) -> str:
    argv = [_ocf_tester(), "-n", name]
    for key, value in params.items():
        argv += ["-o", f"{key}={value}"]
    res = subprocess.run(
        [*argv, str(agent)], capture_output=True, text=True, env=_env(rsctmp), timeout=240
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"{agent} passed all tests" in out, out
    return out


def action(agent: Path, act: str, params: dict[str, str], rsctmp: Path, **extra: str) -> int:
    env = _env(rsctmp)
    env["OCF_RESOURCE_INSTANCE"] = "probe"
    env.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
    env.update(extra)
    return subprocess.run([str(agent), act], env=env, capture_output=True, timeout=60).returncode


def test_meta_data_without_python(agents: Path) -> None:
    """meta-data is answered by the installed shell script alone (a user that may not run the
    interpreter, as ocf-tester checks with `nobody`, still reads it)."""
    for name in ("target", "replicated-volume"):
        env = {"PATH": "/usr/bin:/bin", "OPHIURA_PYTHON": "/nonexistent/python"}
        text = (agents / name).read_text().replace("OPHIURA_PYTHON=", "OPHIURA_PYTHON_PINNED=", 1)
        script = agents / f".{name}-nopython"
        script.write_text(text)
        script.chmod(0o755)
        res = subprocess.run([str(script), "meta-data"], env=env, capture_output=True, text=True)
        assert res.returncode == 0 and f'<resource-agent name="{name}"' in res.stdout
        # without the meta-data shortcut the missing interpreter would fail every action
        assert subprocess.run([str(script), "monitor"], env=env).returncode != 0


def test_target_passes_ocf_tester(agents: Path, tmp_path: Path) -> None:
    params = {
        "backing": str(tmp_path / "disk.img"),
        "size": "16M",
        "listen": f"127.0.0.1:{free_port()}",
        "pidfile": str(tmp_path / "target.pid"),
    }
    ocf_tester(agents / "target", "tgt", params, tmp_path / "rsctmp")
    assert not (tmp_path / "target.pid").exists()  # ocf-tester ends with stop


def test_target_deep_monitor_logs_in(agents: Path, tmp_path: Path) -> None:
    """OCF_CHECK_LEVEL=10 is an iSCSI login + TEST UNIT READY, not only a TCP connect: a
    wrong target name passes the shallow monitor and fails the deep one."""
    _ocf_tester()
    agent, rsctmp = agents / "target", tmp_path / "rsctmp"
    params = {
        "backing": str(tmp_path / "disk.img"),
        "size": "8M",
        "listen": f"127.0.0.1:{free_port()}",
        "pidfile": str(tmp_path / "target.pid"),
        "iqn": "iqn.2026-11.io.ophiura:ocf",
    }
    assert action(agent, "start", params, rsctmp) == 0
    try:
        assert action(agent, "monitor", params, rsctmp, OCF_CHECK_LEVEL="10") == 0
        wrong = {**params, "iqn": "iqn.2026-11.io.ophiura:other"}
        assert action(agent, "monitor", wrong, rsctmp) == 0
        assert action(agent, "monitor", wrong, rsctmp, OCF_CHECK_LEVEL="10") == 1
    finally:
        assert action(agent, "stop", params, rsctmp) == 0
    assert action(agent, "monitor", params, rsctmp) == 7


def test_target_bad_params(agents: Path, tmp_path: Path) -> None:
    _ocf_tester()
    agent, rsctmp = agents / "target", tmp_path / "rsctmp"
    good = {"backing": str(tmp_path / "d.img"), "size": "1M", "listen": "127.0.0.1:1"}
    assert action(agent, "validate-all", good, rsctmp) == 0
    assert action(agent, "validate-all", {**good, "listen": "nope"}, rsctmp) == 6
    assert action(agent, "validate-all", {**good, "size": "12Q"}, rsctmp) == 6
    assert action(agent, "validate-all", {**good, "backing": "/no/such/dir/x"}, rsctmp) == 5
    assert action(agent, "validate-all", {"size": "1M"}, rsctmp) == 6  # backing required
    assert action(agent, "promote", good, rsctmp) == 3
    assert subprocess.run([str(agent)], capture_output=True).returncode == 2


@pytest.fixture
async def ses(tmp_path: Path) -> AsyncIterator[tuple[Path, list[str]]]:
    """Three `ophiura se` processes (stopped by PID at the end)."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    procs, specs = [], []
    try:
        for name in "abc":
            port = free_port()
            log = open(tmp_path / f"se-{name}.log", "wb")  # noqa: SIM115
            argv = [sys.executable, "-m", "ophiura.cli", "se", "--name", name]
            argv += ["--data-dir", str(tmp_path / f"se-{name}")]
            argv += ["--listen", f"127.0.0.1:{port}", "--secret-file", str(secret)]
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            specs.append(f"{name}=127.0.0.1:{port}")
        for proc, spec in zip(procs, specs, strict=True):
            await wait_port_async(int(spec.rsplit(":", 1)[1]), 15, proc)
        yield secret, specs
    finally:
        stop_all(procs, 5)


def _he_params(tmp_path: Path, secret: Path, specs: list[str]) -> dict[str, str]:
    cfg = tmp_path / "he.toml"
    se_list = ", ".join(f'"{s}"' for s in specs)
    cfg.write_text(
        f'quorum = 2\nse = [{se_list}]\nvolume = ["vol:8M"]\nnbd = "127.0.0.1:{free_port()}"\n'
        f'queue = "4M"\ncache = "1M"\nstate_dir = "{tmp_path / "he-state"}"\n'
    )
    return {
        "config": str(cfg),
        "control": f"127.0.0.1:{free_port()}",
        "volume": "vol",
        "secret_file": str(secret),
        "grace": "5",
        "pidfile": str(tmp_path / "he.pid"),
    }


async def test_replicated_volume_passes_ocf_tester(
    agents: Path, tmp_path: Path, ses: tuple[Path, list[str]]
) -> None:
    secret, specs = ses
    params = _he_params(tmp_path, secret, specs)
    ocf_tester(agents / "replicated-volume", "rv", params, tmp_path / "rsctmp")
    assert read_pidfile(tmp_path / "he.pid") is None  # ocf-tester ends with stop: HE gone


async def test_replicated_volume_monitor_sees_the_he(
    agents: Path, tmp_path: Path, ses: tuple[Path, list[str]]
) -> None:
    """monitor is the HE's control API, not only its pid: a HE killed behind the agent's back
    is a failure (1), not 'stopped' (7), so Pacemaker recovers it."""
    secret, specs = ses
    agent, rsctmp = agents / "replicated-volume", tmp_path / "rsctmp"
    params = _he_params(tmp_path, secret, specs)
    assert action(agent, "validate-all", {**params, "config": "/no/such.toml"}, rsctmp) == 6
    assert action(agent, "monitor", params, rsctmp) == 7
    assert action(agent, "start", params, rsctmp) == 0
    try:
        assert action(agent, "monitor", params, rsctmp) == 0
        rec = read_pidfile(tmp_path / "he.pid")
        assert rec is not None and rec.alive()
        os.kill(rec.pid, 9)
        assert action(agent, "monitor", params, rsctmp) == 1
    finally:
        assert action(agent, "stop", params, rsctmp) == 0
    assert action(agent, "monitor", params, rsctmp) == 7


def test_agents_ship_in_the_wheel() -> None:
    """The scripts are package data (pyproject), executable, and `install` renders each."""
    import tomllib
    from importlib import resources

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "agents/*" in pyproject["tool"]["setuptools"]["package-data"]["ophiura.ocf"]
    for name in ("target", "replicated-volume"):
        shipped = Path(str(resources.files("ophiura.ocf").joinpath("agents", name)))
        assert os.access(shipped, os.X_OK), shipped
        assert f"-m ophiura.ocf {name}" in shipped.read_text()
