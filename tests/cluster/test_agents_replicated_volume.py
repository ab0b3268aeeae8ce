"""`replicated-volume` against real `ophiura se` and `ophiura he` processes: starting it on a
second node raises the epoch, and the first node's HE is fenced."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ophiura.cluster.agents.base import OcfCode, Resource
from ophiura.cluster.agents.process import ProcessAgent
from ophiura.cluster.agents.replicated_volume import ReplicatedVolumeAgent, judge
from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import stop_all, wait_port_async

SECRET = b"0123456789abcdef-agent-test-secret"


@pytest.fixture
async def ses(tmp_path: Path) -> AsyncIterator[tuple[Path, list[str]]]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    procs, specs = [], []
    try:
        for name in "abc":
            port = free_port()
            log = open(tmp_path / f"se-{name}.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "ophiura.cli",
                        "se",
                        "--name",
                        name,
                        "--data-dir",
                        str(tmp_path / f"se-{name}"),
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--secret-file",
                        str(secret),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            specs.append(f"{name}=127.0.0.1:{port}")
        for proc, spec in zip(procs, specs, strict=True):
            await wait_port_async(int(spec.rsplit(":", 1)[1]), 15, proc)
        yield secret, specs
    finally:
        stop_all(procs, 5)  # only the SEs this test started, by PID


def _node(tmp_path: Path, node: str, secret: Path, ses: list[str]) -> tuple[Resource, int]:
    control, nbd = free_port(), free_port()
    cfg = tmp_path / f"he-{node}.toml"
    se_list = ", ".join(f'"{s}"' for s in ses)
    cfg.write_text(
        f'quorum = 2\nse = [{se_list}]\nvolume = ["vol:8M"]\nnbd = "127.0.0.1:{nbd}"\n'
        f'queue = "4M"\ncache = "1M"\nstate_dir = "{tmp_path / ("state-" + node)}"\n'
    )
    res = Resource(
        f"rv-{node}",
        "replicated-volume",
        {
            "config": str(cfg),
            "control": f"127.0.0.1:{control}",
            "volume": "vol",
            "secret_file": str(secret),
            "grace": "3",
            "log": str(tmp_path / f"he-{node}.log"),
        },
    )
    return res, nbd


async def _nbd_write(port: int) -> Exception | None:
    from ophiura.nbd.client import NbdClient

    client = await NbdClient.connect("127.0.0.1", port, "vol")
    try:
        await client.write(0, b"w" * 4096)
        return None
    except Exception as exc:  # the fenced HE refuses: that is what we look for
        return exc
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


@pytest.fixture
def agent(tmp_path: Path) -> ReplicatedVolumeAgent:
    return ReplicatedVolumeAgent(ProcessAgent(tmp_path / "rsctmp"))


async def test_second_node_takes_the_epoch_and_fences_the_first(
    tmp_path: Path, ses: tuple[Path, list[str]], agent: ReplicatedVolumeAgent
) -> None:
    secret, specs = ses
    a, nbd_a = _node(tmp_path, "n1", secret, specs)
    b, nbd_b = _node(tmp_path, "n2", secret, specs)
    try:
        assert (await agent.validate(a, 5)).ok
        assert (await agent.monitor(a, 5)).code == OcfCode.NOT_RUNNING
        out = await agent.start(a, 30)
        assert out.ok, (out, (tmp_path / "he-n1.log").read_text()[-2000:])
        assert (await agent.monitor(a, 5)).ok
        assert await _nbd_write(nbd_a) is None
        out = await agent.start(b, 30)  # n2 takes over: epoch + 1 on a majority
        assert out.ok, (out, (tmp_path / "he-n2.log").read_text()[-2000:])
        assert (await agent.monitor(b, 5)).ok
        # n1's next write meets the newer epoch: refused, and its monitor says fenced
        assert await _nbd_write(nbd_a) is not None
        out = await agent.monitor(a, 5)
        assert out.code == OcfCode.ERR_GENERIC and "fenced" in out.reason, out
        assert out.taken  # a newer HE took the volume: the hierarchy runs elsewhere
        assert await _nbd_write(nbd_b) is None
        assert (await agent.stop(a, 10)).ok
        assert (await agent.monitor(a, 5)).code == OcfCode.NOT_RUNNING
        assert (await agent.monitor(b, 5)).ok
    finally:
        await agent.stop(a, 10)
        await agent.stop(b, 10)


async def test_idle_old_owner_is_reported_fenced_without_writing(
    tmp_path: Path, ses: tuple[Path, list[str]], agent: ReplicatedVolumeAgent
) -> None:
    secret, specs = ses
    a, _ = _node(tmp_path, "n1", secret, specs)
    b, _ = _node(tmp_path, "n2", secret, specs)
    try:
        assert (await agent.start(a, 30)).ok
        assert (await agent.start(b, 30)).ok
        await asyncio.sleep(2.0)
        out = await agent.monitor(a, 5)
        assert out.code == OcfCode.ERR_GENERIC and "fenced" in out.reason and out.taken
    finally:
        await agent.stop(a, 10)
        await agent.stop(b, 10)


def test_judge_status() -> None:
    vol = {"name": "vol", "fenced": False, "read_only": False, "epoch": 3}
    assert judge({"role": "active", "volumes": [vol]}, "vol")[0] == OcfCode.SUCCESS
    assert judge({"role": "standby", "volumes": []}, "vol")[0] == OcfCode.NOT_RUNNING
    assert judge({"role": "active", "volumes": [{**vol, "fenced": True}]}, "vol")[0] == (
        OcfCode.ERR_GENERIC
    )
    assert judge({"role": "active", "volumes": [{**vol, "read_only": True}]}, "vol")[0] == (
        OcfCode.DEGRADED
    )
    assert judge({"role": "active", "volumes": []}, "vol")[0] == OcfCode.ERR_GENERIC


async def test_params(tmp_path: Path, agent: ReplicatedVolumeAgent) -> None:
    secret = tmp_path / "s"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    res = Resource(
        "r",
        "replicated-volume",
        {"control": "127.0.0.1:1", "volume": "v", "secret_file": str(secret)},
    )
    out = await agent.validate(res, 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "'config'" in out.reason
    take = Resource("r", "replicated-volume", {**res.params, "mode": "takeover"})
    assert (await agent.validate(take, 5)).ok
    out = await agent.start(take, 1)
    assert out.code == OcfCode.ERR_GENERIC and "takeover" in out.reason
    loose = tmp_path / "loose"
    loose.write_bytes(SECRET)
    loose.chmod(0o644)
    out = await agent.validate(
        Resource("r", "replicated-volume", {**take.params, "secret_file": str(loose)}), 5
    )
    assert out.code == OcfCode.ERR_CONFIGURED and "secret" in out.reason
