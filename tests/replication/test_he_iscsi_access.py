"""The HE's iSCSI frontend is not open to anyone (issue 10, "Secure data path"): CHAP and
mutual CHAP from a `chap_file` only its owner can read, per-volume initiator ACLs, the same
refusals as `ophiura target` (a login status, a log line, the other sessions unaffected), no
secret in the log, and a warning (log and `he status`) for a portal beyond loopback that
authenticates nobody."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ophiura.iscsi.chap_file import ChapFileError, load_chap_file
from ophiura.iscsi.initiator import IscsiInitiator, LoginFailed
from ophiura.testkit.netns import add_address, namespace, unavailable, veth
from ophiura.testkit.procs import spawn
from ophiura.testkit.waiting import wait_for

from .he_harness import HeProcess, SeHandle, secret_file

SECRET = "chap-secret-of-the-cluster"
MUTUAL = "the-he-proves-itself-too"
N1, N2, N3 = "iqn.2026-11.io.example:n1", "iqn.2026-11.io.example:n2", "iqn.2026-11.io.example:n3"
PREFIX = "iqn.2026-11.org.ophiura:"


def chap_file(tmp: Path, mode: int = 0o600, name: str = "volumes", **keys: str) -> Path:
    path = tmp / f"{name}.chap"
    body = {"user": "cluster", "secret": SECRET, "mutual_user": "he", "mutual_secret": MUTUAL}
    body.update(keys)
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in body.items() if v))
    path.chmod(mode)
    return path


def test_chap_file_is_checked_and_never_quoted(tmp_path: Path) -> None:
    assert load_chap_file(chap_file(tmp_path)).mutual_secret == MUTUAL
    bad = {
        "mode 0644": (chap_file(tmp_path, 0o644, "m"), "chmod 600"),
        "short": (chap_file(tmp_path, name="s", secret="short"), "secret is 5 bytes"),
        "same": (chap_file(tmp_path, name="d", mutual_secret=SECRET), "must differ"),
        "half mutual": (chap_file(tmp_path, name="h", mutual_user=""), "go together"),
    }
    for what, (path, message) in bad.items():
        with pytest.raises(ChapFileError, match=message) as info:
            load_chap_file(path)
        assert SECRET not in str(info.value) and MUTUAL not in str(info.value), what
    path = tmp_path / "volumes.chap"
    path.write_text(f'user = "u"\nsecret = {SECRET}\n')  # not TOML: the parser would quote it
    path.chmod(0o600)
    with pytest.raises(ChapFileError, match="not TOML") as info:
        load_chap_file(path)
    assert SECRET not in str(info.value)


def test_he_cli_refuses_a_readable_chap_file_in_one_line(tmp_path: Path) -> None:
    path = chap_file(tmp_path, 0o644)
    r = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "he", "--se", "a=127.0.0.1:1", "--quorum", "1",
         "--chap-file", str(path), "--initiator", "db=not-an-iqn"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "chap_file" in r.stderr and "chmod 600" in r.stderr and SECRET not in r.stderr


async def test_he_iscsi_chap_mutual_chap_and_acls(ses: list[SeHandle], tmp_path: Path) -> None:
    he = HeProcess(
        ses, tmp_path, volumes=("db:8M", "logs:8M"),
        extra=("--chap-file", str(chap_file(tmp_path)), "--initiator", N1,
               "--initiator", f"db={N2}"),
    )  # fmt: skip
    await he.start()
    try:
        good = await IscsiInitiator.connect(
            "127.0.0.1", he.iscsi, PREFIX + "db", N1,
            chap=("cluster", SECRET), mutual=("he", MUTUAL),
        )  # fmt: skip
        await good.test_unit_ready()  # (the unit attention of a new I_T nexus)
        await good.write(0, b"A" * 512)

        async def refused(target: str, name: str, **kw: Any) -> int:
            with pytest.raises(LoginFailed) as info:
                await IscsiInitiator.connect("127.0.0.1", he.iscsi, PREFIX + target, name, **kw)
            return info.value.status

        assert await refused("db", N1, chap=("cluster", "wrong-secret-here")) == 0x0201
        assert await refused("db", N1) == 0x0201  # no CHAP at all
        assert await refused("logs", N2, chap=("cluster", SECRET)) == 0x0202  # ACL: db only
        assert await refused("db", N3, chap=("cluster", SECRET)) == 0x0202  # on no ACL
        with pytest.raises(LoginFailed, match="mutual"):  # an impostor HE is detected
            await IscsiInitiator.connect(
                "127.0.0.1", he.iscsi, PREFIX + "db", N1,
                chap=("cluster", SECRET), mutual=("he", "not-the-he-secret"),
            )  # fmt: skip
        n2 = await IscsiInitiator.connect(
            "127.0.0.1", he.iscsi, PREFIX + "db", N2, chap=("cluster", SECRET)
        )
        await n2.test_unit_ready()
        assert await n2.read(0, 1) == b"A" * 512
        assert await good.read(0, 1) == b"A" * 512  # the first session never noticed
        await n2.logout()
        await good.logout()

        st = await he.status()
        assert st["frontends"]["iscsi_chap"] == "mutual"
        assert st["frontends"]["iscsi_acl"] == [f"*={N1}", f"db={N2}"]
        assert st["exposure"] == []  # loopback
        log = he.log_path.read_text()
        assert SECRET not in log and MUTUAL not in log
        assert "wrong-secret-here" not in log
    finally:
        he.terminate()


@pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))
@pytest.mark.parametrize("guarded", [False, True])
def test_an_open_portal_beyond_loopback_warns(tmp_path: Path, guarded: bool) -> None:
    """In a namespace of its own, the HE's iSCSI portal on 198.51.100.1: without CHAP or an
    ACL the HE warns in its log and in `he status`; with a CHAP file it does not."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    sf = secret_file(tmp_path)
    with namespace("heexp") as ns:
        veth(ns, "v0", "v1")
        add_address(ns, "v0", "198.51.100.1/24")
        se = spawn(
            [sys.executable, "-m", "ophiura.cli", "se", "--name", "a", "--data-dir",
             str(tmp_path / "a"), "--listen", "127.0.0.1:7001", "--secret-file", str(sf)],
            name="se", log=tmp_path / "se.log", ns=ns, env=env,
        )  # fmt: skip
        extra = ["--chap-file", str(chap_file(tmp_path))] if guarded else []
        log = tmp_path / "he.log"
        he = spawn(
            [sys.executable, "-m", "ophiura.cli", "he", "--se", "a=127.0.0.1:7001", "--quorum",
             "1", "--volume", "v:4M", "--iscsi", "198.51.100.1:3260", "--control",
             "127.0.0.1:7600", "--secret-file", str(sf), "--state-dir",
             str(tmp_path / "he-state"), *extra],
            name="he", log=log, ns=ns, env=env,
        )  # fmt: skip
        try:
            wait_for(lambda: "iSCSI target listening" in log.read_text() or not he.alive(), 30,
                     "the HE to serve iSCSI", details=he.tail)  # fmt: skip
            status = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "ophiura.cli", "status",
                 "--control", "127.0.0.1:7600", "--secret-file", str(sf), "--json"],
                capture_output=True, text=True, timeout=60, env=env,
            )  # fmt: skip
            assert status.returncode == 0, status.stderr
            exposure = json.loads(status.stdout)["exposure"]
            warned = "without CHAP or an initiator ACL" in log.read_text()
            assert warned is not guarded, log.read_text()
            assert bool(exposure) is not guarded, exposure
        finally:
            assert he.stop(15) == 0, he.tail()
            se.stop(15)


def test_the_documented_keys_build_the_acl(tmp_path: Path) -> None:
    """docs/replication.md's iSCSI block, with its CHAP file made here, is a working config."""
    import re
    import tomllib

    from ophiura.replication.he.config import build_config

    doc = (Path(__file__).resolve().parents[2] / "docs" / "replication.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if "chap_file" in b)
    values = tomllib.loads(block.replace("/etc/ophiura/volumes.chap", str(chap_file(tmp_path))))
    cfg = build_config({**values, "se": ["a=127.0.0.1:7001"], "quorum": 1})
    assert cfg.chap is not None and cfg.chap.mutual_user == "he"
    assert cfg.acl("db") == {"iqn.2026-11.io.example:n1", "iqn.2026-11.io.example:n2"}
    assert cfg.acl("logs") == {"iqn.2026-11.io.example:n1"}
