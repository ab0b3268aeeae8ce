"""HE configuration from flags and TOML; SCSI-state slots (torn slot never trusted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ophiura.nbd.security import NbdListen
from ophiura.replication.he.config import ConfigError, build_config, load_toml, parse_se
from ophiura.replication.he.scsi_state import SLOT_SIZE, choose_slot, decode_slot, encode_slot
from ophiura.replication.he.se_session import SeSpec


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("a=127.0.0.1:7001", SeSpec("a", "127.0.0.1", 7001)),
        ("near=10.0.0.2:7002,delay=1", SeSpec("near", "10.0.0.2", 7002, 1.0)),
        ("far=h:7003,delay=8,rate=51", SeSpec("far", "h", 7003, 8.0, 51.0)),
    ],
)
def test_parse_se(text: str, spec: SeSpec) -> None:
    assert parse_se(text) == spec


@pytest.mark.parametrize(
    "bad", ["a", "a=host", "a=h:1,delay=x", "a=h:1,speed=3", "=h:1", "a=h:1,delay=-1"]
)
def test_parse_se_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_se(bad)


def test_build_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "he.toml"
    path.write_text(
        'quorum = 2\nse = ["a=127.0.0.1:1", "b=127.0.0.1:2", "c=127.0.0.1:3,delay=4"]\n'
        'volume = ["db:1G", "logs:64M"]\nnbd = "127.0.0.1:10809"\ncache = "0"\nqueue = "8M"\n'
        "standby = true\n"
    )
    cfg = build_config(load_toml(path))
    assert cfg.quorum == 2 and len(cfg.ses) == 3 and cfg.ses[2].delay_ms == 4
    assert cfg.volumes == (("db", 1 << 30), ("logs", 64 << 20))
    assert isinstance(cfg.nbd, NbdListen) and cfg.nbd.address == ("127.0.0.1", 10809)
    assert cfg.iscsi is None
    assert cfg.cache_bytes == 0 and cfg.queue_bytes == 8 << 20 and cfg.standby
    assert cfg.iqn("db") == "iqn.2026-11.org.ophiura:db"


@pytest.mark.parametrize(
    "values",
    [
        {"se": ["a=h:1"]},  # no quorum
        {"se": ["a=h:1"], "quorum": 2},
        {"se": ["a=h:1", "a=h:2"], "quorum": 1},
        {"se": ["a=h:1"], "quorum": 1, "volume": ["bad name:1M"]},
        {"se": ["a=h:1"], "quorum": 1, "volume": ["v:1000"]},
        {"se": ["a=h:1"], "quorum": 1, "bogus": 1},
        {"se": [], "quorum": 1},
    ],
)
def test_build_config_rejects(values: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_config(values)


def test_scsi_state_slots() -> None:
    a = encode_slot(1, {"lun0.pr.json": '{"k": 1}'})
    b = encode_slot(2, {"lun0.pr.json": '{"k": 2}'})
    assert len(a) == len(b) == SLOT_SIZE
    assert decode_slot(a) == (1, {"lun0.pr.json": '{"k": 1}'})
    torn = b[:40] + bytes(len(b) - 40)
    assert decode_slot(torn) is None
    assert decode_slot(bytes(SLOT_SIZE)) is None
    assert choose_slot([decode_slot(a), decode_slot(torn)]) == (1, {"lun0.pr.json": '{"k": 1}'})
    assert choose_slot([decode_slot(a), decode_slot(b)])[0] == 2
    assert choose_slot([None, None]) == (0, {})


# ---- `ophiura he` errors: one line naming the problem, never a traceback (issue 12) ----------


def _he(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "he", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
    assert len(err) == 1 and all(w in err[0] for w in words), proc.stderr


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (None, ("missing.toml",)),
        ("quorum = [", ("he.toml",)),
        ('quorum = "two"\nse = ["a=127.0.0.1:1"]', ("quorum", "'two'", "integer")),
        ("quorum = 1\nse = 5", ("se", "5", "list")),
        ('quorum = 1\nse = ["a=127.0.0.1:1"]\nstandby = "yes"', ("standby", "true or false")),
        ('quorum = 1\nse = ["a=127.0.0.1:1"]\nevict_wait = "soon"', ("evict_wait", "number")),
        ('quorum = 1\nse = ["a=127.0.0.1:1"]\nvolume = ["v:1x"]', ("--volume v",)),
        ('quorum = 1\nse = ["a=127.0.0.1:1"]\nbogus = 1', ("unknown", "bogus")),
    ],
)
def test_he_config_errors_are_one_line(
    tmp_path: Path, text: str | None, words: tuple[str, ...]
) -> None:
    path = tmp_path / ("missing.toml" if text is None else "he.toml")
    if text is not None:
        path.write_text(text + "\n")
    _one_line_error(_he("--config", str(path)), *words)


def test_he_whose_ses_are_unreachable_says_so(tmp_path: Path) -> None:
    from ophiura.testkit.ports import free_port

    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef-secret")
    secret.chmod(0o600)
    proc = _he(
        "--se",
        f"a=127.0.0.1:{free_port()}",
        "--quorum",
        "1",
        "--volume",
        "v:8M",
        "--control",
        f"127.0.0.1:{free_port()}",
        "--secret-file",
        str(secret),
    )
    _one_line_error(proc, "SEs reachable", "need 1")
