"""Shell completion (docs/operations.md, "Shell completion"): click generates the script for
bash, zsh and fish from the command tree, and the script it prints really completes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the `ophiura` console script runs, named as the console script names itself.
RUN = [sys.executable, "-c", "from ophiura.cli import main; main(prog_name='ophiura')"]


def _run(**env: str) -> str:
    full = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **env,
    }
    done = subprocess.run(RUN, env=full, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _ophiura_completion ophiura"),
        ("zsh", "#compdef ophiura"),
        ("fish", "complete --no-files --command ophiura"),
    ],
)
def test_completion_script_is_generated(shell: str, marker: str) -> None:
    script = _run(_OPHIURA_COMPLETE=f"{shell}_source")
    assert marker in script
    assert f"_OPHIURA_COMPLETE={shell}_complete" in script


def test_bash_script_registers_the_completion_function() -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    script = _run(_OPHIURA_COMPLETE="bash_source")
    done = subprocess.run(
        ["bash", "-c", f"{script}\ncomplete -p ophiura"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "_ophiura_completion" in done.stdout


def test_completion_completes_commands_subcommands_and_options() -> None:
    def complete(words: str) -> list[str]:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        out = _run(_OPHIURA_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD=str(cword))
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert sorted(complete("ophiura ta")) == ["takeover", "target"]
    assert "switchover" in complete("ophiura cluster ")
    assert "--backing" in complete("ophiura target --")
    assert "--json" in complete("ophiura cluster status --")
