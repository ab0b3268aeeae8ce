"""`ophiura target --config FILE.toml` validation: every problem in one pass, one line each,
named by its key path; secrets never inline in a file others can read; nothing created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ophiura.target_config import TargetConfigError, load

SECRET = "0123456789abcdef"


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "target.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def _secret(tmp_path: Path, name: str, value: str = SECRET, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(TargetConfigError) as info:
        load(path)
    lines = str(info.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return info.value.problems


def test_a_good_file_loads_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    _secret(tmp_path, "a.chap")
    path = _write(
        tmp_path,
        """
[nbd]
listen = "127.0.0.1:10809"
[[targets]]
iqn = "iqn.2026-11.io.test:a"
initiators = ["iqn.2026-11.io.test:h1"]
chap = { user = "u", secret_file = "a.chap", mutual_user = "t", mutual_secret = "fedcba9876543210" }
[[targets.luns]]
backing = "a0.img"
size = "1M"
nbd_export = "a0"
[[targets.luns]]
backing = "a1.img"
size = 4194304
block_size = 4096
""",
    )
    cfg = load(path)
    (t,) = cfg.targets
    assert t.portal == ("127.0.0.1", 3260)
    assert [(lun.lun, lun.backing, lun.size) for lun in t.luns] == [
        (0, tmp_path / "a0.img", 1 << 20),
        (1, tmp_path / "a1.img", 4 << 20),
    ]
    assert t.state_dir == tmp_path / "a0.img.state"
    assert t.initiators == frozenset({"iqn.2026-11.io.test:h1"})
    assert t.chap is not None and t.chap.secret == SECRET and t.chap.mutual_secret is not None
    assert SECRET not in repr(t)  # a spec in a log line or traceback shows no secret
    assert cfg.nbd == ("127.0.0.1", 10809) and cfg.admin_socket_explicit is False
    assert not (tmp_path / "a0.img").exists()  # validation creates nothing


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    _secret(tmp_path, "short.chap", "tooshort")
    _secret(tmp_path, "open.chap", mode=0o644)
    path = _write(
        tmp_path,
        """
admin_socket = "/nonexistent-dir/t.sock"
colour = "blue"
[[targets]]
iqn = "not-an-iqn"
listen = "127.0.0.1"
initiators = ["iqn.2026-11.io.test:ok", 7]
chap = { user = "u", secret_file = "short.chap" }
[[targets.luns]]
backing = "/typo/dir/x.img"
size = "10G"
[[targets.luns]]
lun = 0
backing = "b.img"
size = true
thin = "yes"
nbd_export = "b"
spare = 1
[[targets]]
iqn = "iqn.2026-11.io.test:b"
chap = { user = "u", secret_file = "open.chap" }
[[targets.luns]]
backing = "missing.img"
""",
    )
    problems = _problems(path)
    expected = {
        "admin_socket": "/nonexistent-dir is not a directory",
        "colour": "unknown key",
        "targets[0].iqn": "is not an iSCSI name",
        "targets[0].listen": "is not HOST:PORT",
        "targets[0].initiators[1]": "is not an iSCSI name",
        "targets[0].chap.secret_file": "the secret is 8 bytes",
        "targets[0].luns[0].backing": "/typo/dir is not a directory (not created",
        "targets[0].luns[1].size": "must be a string or an integer, not true or false",
        "targets[0].luns[1].thin": "must be true or false, not a string",
        "targets[0].luns[1].spare": "unknown key",
        "targets[1].chap.secret_file": "chmod 600",
        "targets[1].luns[0].backing": "does not exist: give size",
    }
    for key, text in expected.items():
        assert any(p.startswith(f"{key}: ") and text in p for p in problems), (key, problems)
    assert len(problems) == len(expected), problems


def test_an_inline_secret_needs_a_private_file(tmp_path: Path) -> None:
    text = f"""
[[targets]]
iqn = "iqn.2026-11.io.test:a"
[targets.chap]
user = "u"
secret = "{SECRET}"
[[targets.luns]]
backing = "a.img"
size = "1M"
"""
    (problem,) = _problems(_write(tmp_path, text, 0o644))
    assert problem.startswith("targets[0].chap.secret: inline secret in a file group or others")
    assert "chmod 600" in problem and "secret_file" in problem
    assert SECRET not in problem
    assert load(_write(tmp_path, text, 0o600)).targets[0].chap.secret == SECRET  # type: ignore[union-attr]


def test_conflicts_across_targets(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[[targets]]
iqn = "iqn.2026-11.io.test:a"
luns = [{ backing = "x.img", size = "1M", nbd_export = "x" }]
[[targets]]
iqn = "iqn.2026-11.io.test:a"
luns = [{ backing = "x.img", size = "1M", nbd_export = "x" }]
""",
    )
    problems = _problems(path)
    assert problems == [
        "targets[0].luns[0].nbd_export: needs [nbd] listen = HOST:PORT",
        "targets[1].iqn: iqn.2026-11.io.test:a is also targets[0]",
        f"targets[1].luns[0].backing: {tmp_path / 'x.img'} is also targets[0].luns[0]",
        "targets[1].luns[0].nbd_export: needs [nbd] listen = HOST:PORT",
        "targets[1].luns[0].nbd_export: 'x' is also targets[0].luns[0]",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[targets]\n", "not valid TOML: "),
        ("", "targets: required"),
        ("targets = 3\n", "targets: must be a non-empty array"),
        ('[[targets]]\niqn = "iqn.2026-11.io.test:a"\n', "targets[0].luns: required"),
        ('[[targets]]\niqn = 5\nluns = [{backing = "a", size = 512}]\n', "targets[0].iqn: must"),
    ],
)
def test_bad_files_are_one_line_errors_from_the_cli(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "target", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: {message}"), proc.stderr


def test_config_and_single_target_options_do_not_mix(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "target", "--config", str(tmp_path / "t.toml"),
         "--backing", str(tmp_path / "x.img"), "--thin"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--config and --backing, --thin: put these in the file instead" in proc.stderr


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path / "nope.toml")
    assert problem == "cannot read: No such file or directory"
    assert os.listdir(tmp_path) == []


def test_an_unreadable_reservation_file_is_one_line_at_start(tmp_path: Path) -> None:
    """The target refuses to start without the fence it owes, and says why in one line."""
    state = tmp_path / "d.img.state"
    state.mkdir()
    (state / "lun0.pr.json").write_text("garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "ophiura.cli", "target", "--backing", str(tmp_path / "d.img"),
         "--size", "1M", "--listen", "127.0.0.1:0", "--admin-socket", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"Error: cannot restore persistent reservations from {state / 'lun0.pr.json'}")
    )
    assert not (tmp_path / "s").exists()
