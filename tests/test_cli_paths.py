"""A typo in a path must not grow a directory tree: missing parents are a one-line error."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ophiura.cli import main


def test_target_refuses_a_backing_file_in_a_missing_directory(tmp_path: Path) -> None:
    backing = tmp_path / "typo" / "dir" / "x.img"
    out = CliRunner().invoke(main, ["target", "--backing", str(backing), "--size", "1M"])
    assert out.exit_code == 2
    assert f"{backing.parent} is not a directory" in out.output
    assert "Traceback" not in out.output
    assert not (tmp_path / "typo").exists()


def test_se_refuses_a_data_dir_whose_parent_is_missing(tmp_path: Path) -> None:
    data = tmp_path / "typo" / "se1"
    out = CliRunner().invoke(
        main, ["se", "--name", "se1", "--data-dir", str(data), "--listen", "127.0.0.1:0"]
    )
    assert out.exit_code == 1
    assert f"--data-dir: {data.parent} is not a directory" in out.output
    assert not (tmp_path / "typo").exists()
