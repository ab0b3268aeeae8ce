"""`ophiura ocf install`: put the OCF agents where Pacemaker looks for them.

Pacemaker finds `ocf:ophiura:NAME` at `$OCF_ROOT/resource.d/ophiura/NAME` (OCF_ROOT is
/usr/lib/ocf on Debian, RHEL and SUSE). pip cannot write there, so the agents ship as package data
(`ophiura/ocf/agents/`) and this command installs each one as a small shell script that pins:

- the interpreter and the directory ophiura was imported from, so the agent runs this very
  installation (a venv's) whatever Pacemaker's PATH is;
- the meta-data, printed without starting Python, so users who may not run that interpreter
  (`hacluster` running `crm ra info`, ocf-tester's check as `nobody`) still read it.
"""

from __future__ import annotations

import os
import shlex
import sys
from importlib import resources
from pathlib import Path

import ophiura
from ophiura.ocf.runner import AgentInfo, metadata_xml

PROVIDER = "ophiura"
DEFAULT_OCF_ROOT = Path("/usr/lib/ocf")
MARKER = "OPHIURA_OCF_META_DATA"


def agent_infos() -> dict[str, AgentInfo]:
    from ophiura.ocf import replicated_volume, target

    return {"target": target.INFO, "replicated-volume": replicated_volume.INFO}


def packaged_script(name: str) -> str:
    """The agent as shipped in the wheel (ophiura/ocf/agents/NAME)."""
    return resources.files("ophiura.ocf").joinpath("agents", name).read_text()


def render(name: str, info: AgentInfo) -> str:
    """The installed agent: the packaged script with interpreter, path and meta-data pinned."""
    body = packaged_script(name)
    shebang, _, rest = body.partition("\n")
    code_dir = str(Path(ophiura.__file__).resolve().parent.parent)
    xml = metadata_xml(info)
    if MARKER in xml:
        raise ValueError(f"meta-data of {name} contains {MARKER}")
    head = [
        shebang,
        f"# Installed by `ophiura ocf install` from ophiura {ophiura.__version__}.",
        f"OPHIURA_PYTHON={shlex.quote(sys.executable)}",
        f"PYTHONPATH={shlex.quote(code_dir)}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export OPHIURA_PYTHON PYTHONPATH",
        'if [ "$1" = meta-data ]; then',
        f"cat <<'{MARKER}'",
        xml.rstrip("\n"),
        MARKER,
        "exit 0",
        "fi",
    ]
    return "\n".join(head) + "\n" + rest


def provider_dir(prefix: Path | None = None, ocf_root: Path = DEFAULT_OCF_ROOT) -> Path:
    """`[PREFIX]/OCF_ROOT/resource.d/ophiura` (PREFIX as DESTDIR: a staging root)."""
    root = Path(prefix) / ocf_root.relative_to(ocf_root.anchor) if prefix else ocf_root
    return root / "resource.d" / PROVIDER


def install(prefix: Path | None = None, ocf_root: Path = DEFAULT_OCF_ROOT) -> list[Path]:
    """Write every agent (mode 755) atomically; return their paths."""
    dest = provider_dir(prefix, ocf_root)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, info in agent_infos().items():
        path = dest / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(render(name, info))
        tmp.chmod(0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def uninstall(prefix: Path | None = None, ocf_root: Path = DEFAULT_OCF_ROOT) -> list[Path]:
    dest = provider_dir(prefix, ocf_root)
    removed = []
    for name in agent_infos():
        path = dest / name
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed
