"""Control API (auth, status, volume admin) and `ophiura status` / `ophiura volume` commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ophiura.cli import main
from ophiura.replication.he.control import ControlError, control_call

from .he_harness import SECRET, SeHandle, he_config, secret_file, start_he, wait_all_up


async def test_status_volume_admin_and_auth(ses: list[SeHandle], tmp_path: Path) -> None:
    he = await start_he(he_config(ses, nbd=("127.0.0.1", 0)), tmp_path)
    port = he.control.port
    try:
        await wait_all_up(he)
        with pytest.raises(ControlError, match="authentication"):
            await control_call("127.0.0.1", port, b"wrong-secret-xxxxxxxx", "status")
        st = await control_call("127.0.0.1", port, SECRET, "status")
        assert st["role"] == "active" and st["n"] == 3 and st["quorum"] == 2
        assert st["warning"] is None
        (vol,) = st["volumes"]
        assert {s["state"] for s in vol["ses"]} == {"up"}
        assert vol["queue"]["capacity"] == 4 << 20 and "hit_ratio" in vol["cache"]
        assert all(s["rtt_ms"] is not None for s in st["ses"])

        created = await control_call(
            "127.0.0.1", port, SECRET, "volume-create", name="extra", size=4 << 20
        )
        assert created["size"] == 4 << 20
        await wait_all_up(he, "extra")
        await he.volumes["extra"].data.write(0, b"e" * 4096)
        names = [v["name"] for v in await control_call("127.0.0.1", port, SECRET, "volume-list")]
        assert sorted(names) == ["extra", "vol"]
        assert "extra" in he.frontends.exports
        resized = await control_call(
            "127.0.0.1", port, SECRET, "volume-resize", name="extra", size=8 << 20
        )
        assert resized["size"] == 8 << 20
        assert await he.volumes["extra"].data.read(0, 4096) == b"e" * 4096
        with pytest.raises(ControlError, match="exists"):
            await control_call("127.0.0.1", port, SECRET, "volume-create", name="vol", size=4096)
        deleted = await control_call("127.0.0.1", port, SECRET, "volume-delete", name="extra")
        assert sorted(deleted["deleted_on"]) == ["a", "b", "c"]
        names = [v["name"] for v in await control_call("127.0.0.1", port, SECRET, "volume-list")]
        assert names == ["vol"]
        with pytest.raises(ControlError, match="unknown op"):
            await control_call("127.0.0.1", port, SECRET, "nonsense")

        # the CLI (in a thread: it runs its own event loop)
        args = ["--control", f"127.0.0.1:{port}", "--secret-file", str(secret_file(tmp_path))]
        runner = CliRunner()
        res = await asyncio.to_thread(runner.invoke, main, ["status", *args, "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["volumes"][0]["name"] == "vol"
        res = await asyncio.to_thread(runner.invoke, main, ["status", *args])
        assert res.exit_code == 0, res.output
        assert "storage elements" in res.output and "volume vol" in res.output
        res = await asyncio.to_thread(runner.invoke, main, ["volume", "list", *args])
        assert res.exit_code == 0 and "iqn.2026-11.org.ophiura:vol" in res.output
    finally:
        await he.stop()


async def test_two_q_le_n_warns_loudly(ses: list[SeHandle], tmp_path: Path) -> None:
    he = await start_he(he_config(ses, quorum=1), tmp_path)
    try:
        st = he.status()
        assert st["warning"] and "2Q <= N" in st["warning"]
    finally:
        await he.stop()
