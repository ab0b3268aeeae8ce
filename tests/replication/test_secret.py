"""The shared secret: created once, private, refused when unsafe."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ophiura.replication.wire.secret import SecretError, load_secret


def test_default_secret_created_private_and_stable(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    first = load_secret()
    path = tmp_path / "ophiura" / "secret"
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert len(first) == 64
    assert load_secret() == first == load_secret(path)


def test_concurrent_creation_agrees_on_one_secret(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_secret())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert [f.name for f in (tmp_path / "ophiura").iterdir()] == ["secret"]


def test_group_readable_secret_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("x" * 32)
    path.chmod(0o640)
    with pytest.raises(SecretError, match="readable by group or others"):
        load_secret(path)


def test_short_secret_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(SecretError, match="at least 16"):
        load_secret(path)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot open"):
        load_secret(tmp_path / "nope")
