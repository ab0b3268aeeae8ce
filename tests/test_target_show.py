"""examples/target.toml, started for real: `ophiura target --config` serves every target and LUN,
enforces the ACLs and CHAP, and `ophiura target show` reports the sessions and reservations made
by real initiators (ours and libiscsi's tools)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ophiura.iscsi import pr_client as pr
from ophiura.iscsi.initiator import IscsiInitiator, LoginFailed
from ophiura.nbd.client import NbdClient
from ophiura.testkit.ports import free_ports
from ophiura.testkit.procs import log_tail, stop, wait_port
from ophiura.testkit.waiting import wait_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "target.toml"
DB = "iqn.2026-11.io.example:db"
IMAGES = "iqn.2026-11.io.example:images"
NODE1 = "iqn.2026-11.io.example:node1"
MiB = 1 << 20


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    config: Path
    socket: Path
    iscsi: int
    nbd: int
    secrets: dict[str, str]
    log: Path


def _ophiura(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ophiura.cli", *args], capture_output=True, text=True, timeout=60
    )


def _materialize(tmp_path: Path) -> tuple[Path, dict[str, str], int, int]:
    """The example with its directories and ports moved into this test; nothing else changed."""
    iscsi, nbd = free_ports(2)
    dirs = {d: tmp_path / d for d in ("lib", "etc", "run")}
    for d in dirs.values():
        d.mkdir()
    text = EXAMPLE.read_text()
    for old, new in (
        ("/var/lib/ophiura", str(dirs["lib"])),
        ("/etc/ophiura", str(dirs["etc"])),
        ("/run/ophiura", str(dirs["run"])),
        ("127.0.0.1:3260", f"127.0.0.1:{iscsi}"),
        ("127.0.0.1:10809", f"127.0.0.1:{nbd}"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    secrets = {}
    for name in ("db", "db-target", "images"):
        secrets[name] = os.urandom(12).hex()
        path = dirs["etc"] / f"{name}.chap"
        path.write_text(secrets[name] + "\n")
        path.chmod(0o600)
    with (dirs["lib"] / "golden.img").open("wb") as f:  # the read-only LUN must exist
        f.truncate(64 * MiB)
    config = tmp_path / "target.toml"
    config.write_text(text)
    return config, secrets, iscsi, nbd


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    config, secrets, iscsi, nbd = _materialize(tmp_path)
    log = tmp_path / "target.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ophiura.cli", "target", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    sock = tmp_path / "run" / "target.sock"
    try:
        wait_port(iscsi, 30, proc)
        wait_port(nbd, 30, proc)
        wait_for(sock.exists, 30, "the status socket", details=lambda: log_tail(log))
        yield Running(proc, config, sock, iscsi, nbd, secrets, log)
    finally:
        code = stop(proc, 15)
    assert code == 0, log_tail(log)
    assert not sock.exists()  # removed on a clean stop


def _show(r: Running) -> dict:  # type: ignore[type-arg]
    out = _ophiura("target", "show", "--json", "--socket", str(r.socket))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def _login(r: Running, iqn: str = DB, initiator: str = NODE1, **kw) -> IscsiInitiator:  # type: ignore[no-untyped-def]
    return await IscsiInitiator.connect("127.0.0.1", r.iscsi, iqn, initiator, **kw)


def test_the_example_serves_its_targets_with_acls_chap_and_show(running: Running) -> None:
    r = running
    db_chap = ("db", r.secrets["db"])
    mutual = ("db-target", r.secrets["db-target"])

    async def scenario() -> None:
        # The ACL refuses a foreign initiator, even with the right secret (authorization).
        with pytest.raises(LoginFailed) as err:
            await _login(r, initiator="iqn.2026-11.io.example:intruder", chap=db_chap)
        assert err.value.status == 0x0202
        # CHAP refuses a wrong secret (authentication); mutual CHAP proves the target.
        with pytest.raises(LoginFailed) as err:
            await _login(r, chap=("db", "not-the-secret-at-all"))
        assert err.value.status == 0x0201
        with pytest.raises(LoginFailed) as err:
            await _login(r, chap=db_chap, mutual=("db-target", "a-wrong-target-secret"))
        ini = await _login(r, chap=db_chap, mutual=mutual)
        # Discovery shows a foreign initiator only the targets its ACL lets it see.
        seen = await IscsiInitiator.discover("127.0.0.1", r.iscsi, "iqn.2026-11.io.example:x")
        assert [name for name, _ in seen] == [IMAGES]

        # Every LUN is there, with its size and block size.
        await ini.test_unit_ready()  # takes the power-on unit attention
        report = await ini.scsi(0, bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), read_length=256)
        assert report.data[:4] == (16).to_bytes(4, "big")  # two LUNs, 8 bytes each
        assert await ini.read_capacity16(0) == (1 << 30 >> 9, 512)
        await ini.test_unit_ready(1)
        assert await ini.read_capacity16(1) == (256 * MiB // 4096, 4096)
        await ini.write(8, b"\x5a" * 512)

        # A persistent reservation made through the client, seen by `target show`.
        reg = await ini.persistent_reserve_out(pr.PrOut.REGISTER, sa_key=0xABC)
        assert reg.ok
        res = await ini.persistent_reserve_out(pr.PrOut.RESERVE, key=0xABC, pr_type=1)
        assert res.ok
        local = ini._writer.get_extra_info("sockname")
        state = await asyncio.to_thread(_show, r)
        (db, images) = state["targets"]
        assert db["iqn"] == DB and db["chap"] == "mutual" and NODE1 in db["initiators"]
        (session,) = db["sessions"]
        assert session["initiator"] == NODE1
        assert session["address"] == f"{local[0]}:{local[1]}"
        assert session["since"].endswith("Z")
        lun0 = db["luns"][0]
        assert [lun["lun"] for lun in db["luns"]] == [0, 1]
        assert lun0["reservation"]["registrations"] == [
            {
                "key": "0xabc",
                "initiator_port": f"{NODE1},i,0x{ini.isid:012x}",
                "target_port": f"{DB},t,0x0001",
            }
        ]
        assert lun0["reservation"]["type"] == "write-exclusive"
        assert lun0["reservation"]["holder"] == f"{NODE1},i,0x{ini.isid:012x}"
        assert images["luns"][0]["read_only"] and images["sessions"] == []
        assert state["nbd"]["exports"] == [{"name": "db-data", "target": DB, "lun": 0}]
        text = json.dumps(state)
        assert all(secret not in text for secret in r.secrets.values())

        # The NBD export is the same LUN 0.
        nbd = await NbdClient.connect("127.0.0.1", r.nbd, "db-data", timeout=10)
        try:
            assert await nbd.read(8 * 512, 512) == b"\x5a" * 512
        finally:
            await nbd.disconnect()

        # The human form names the session and the reservation too.
        human = await asyncio.to_thread(_ophiura, "target", "show", "--config", str(r.config))
        assert human.returncode == 0, human.stderr
        assert NODE1 in human.stdout and f"{local[0]}:{local[1]}" in human.stdout
        assert "0xabc" in human.stdout and "write-exclusive" in human.stdout

        # The read-only LUN refuses writes; its CHAP is one-way.
        img = await _login(r, IMAGES, chap=("images", r.secrets["images"]))
        await img.test_unit_ready()
        result = await img.scsi(0, bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]), data_out=bytes(512))
        assert result.status == 2 and result.sense_key == 0x07  # DATA PROTECT
        await img.logout()

        await ini.logout()
        assert _show(r)["targets"][0]["sessions"] == []

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.skipif(shutil.which("iscsi-inq") is None, reason="needs libiscsi-bin")
def test_libiscsi_tools_see_the_acl_and_chap(running: Running) -> None:
    r = running
    secret = r.secrets["images"]
    url = f"iscsi://images%{secret}@127.0.0.1:{r.iscsi}/{IMAGES}/0"
    ok = subprocess.run(["iscsi-inq", "-i", NODE1, url], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "OPHIURA" in ok.stdout, ok.stderr
    wrong = url.replace(secret, "wrong-secret-value")
    bad = subprocess.run(["iscsi-inq", "-i", NODE1, wrong], capture_output=True, timeout=30)
    assert bad.returncode != 0
    db_url = f"iscsi://db%{r.secrets['db']}@127.0.0.1:{r.iscsi}/{DB}/0"
    foreign = subprocess.run(
        ["iscsi-inq", "-i", "iqn.2026-11.io.example:intruder", db_url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert foreign.returncode != 0
    allowed = subprocess.run(
        ["iscsi-inq", "-i", NODE1, db_url], capture_output=True, text=True, timeout=30
    )
    assert allowed.returncode == 0, allowed.stderr


def test_show_without_a_running_target_is_one_line(tmp_path: Path) -> None:
    out = _ophiura("target", "show", "--socket", str(tmp_path / "none.sock"))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"Error: no target is running: {tmp_path / 'none.sock'} does not exist"
    )


def test_the_command_line_form_notifies_systemd_once_serving(tmp_path: Path) -> None:
    """`Type=notify`: READY=1 arrives only when the portal accepts logins and the status socket
    answers; STOPPING=1 on SIGTERM. The single-target options work as before."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    (port,) = free_ports(1)
    status = tmp_path / "status.sock"
    log = tmp_path / "target.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ophiura.cli", "target", "--backing", str(tmp_path / "d.img"),
             "--size", "4M", "--listen", f"127.0.0.1:{port}", "--admin-socket", str(status)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        )  # fmt: skip
    try:
        try:
            ready = notify.recv(4096)
        except TimeoutError:
            pytest.fail(f"no READY=1: {log_tail(log)}")
        assert ready.startswith(b"READY=1\n"), ready
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # already listening: no wait needed after READY
        state = json.loads(_ophiura("target", "show", "--json", "--socket", str(status)).stdout)
        assert state["targets"][0]["iqn"] == "iqn.2026-11.io.ophiura:disk"
        assert state["targets"][0]["luns"][0]["size"] == 4 * MiB
    finally:
        code = stop(proc, 15)
    assert code == 0, log_tail(log)
    assert notify.recv(4096).startswith(b"STOPPING=1\n")
    notify.close()


async def test_the_status_socket_is_private_and_never_shared(tmp_path: Path) -> None:
    """Mode 0600 from the start; a live socket is not stolen; a dead target's one is replaced;
    stopping removes only our own socket."""
    from ophiura.target_admin import StatusSocket, TargetAdminError, query

    path = tmp_path / "t.sock"
    first = StatusSocket(path, lambda: {"who": "first"})
    await first.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert await asyncio.to_thread(query, path) == {"who": "first"}
        second = StatusSocket(path, lambda: {"who": "second"})
        with pytest.raises(OSError, match="another running target answers there"):
            await second.start()
        assert await asyncio.to_thread(query, path) == {"who": "first"}
    finally:
        await first.stop()
    assert not path.exists()

    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: what a killed target leaves behind
    dead.close()
    with pytest.raises(TargetAdminError, match="nothing answers"):
        await asyncio.to_thread(query, path)
    third = StatusSocket(path, lambda: {"who": "third"})
    await third.start()
    try:
        assert await asyncio.to_thread(query, path) == {"who": "third"}
    finally:
        await third.stop()

    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket"):
        await StatusSocket(path, dict).start()
    assert path.read_text() == "not a socket"


def test_target_without_backing_or_config_is_a_usage_error() -> None:
    out = _ophiura("target")
    assert out.returncode == 2
    assert "give --backing FILE (one target) or --config FILE.toml" in out.stderr
