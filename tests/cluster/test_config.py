"""Configuration parsing and validate(): every problem named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ophiura.cluster.config import ConfigError, load, parse
from ophiura.cluster.validation import validate

from .kit import config_dict

AGENT = "python:tests.cluster.fake_agent:FakeAgent"


def problems(d: dict[str, Any]) -> list[str]:
    return validate(parse(d))


def test_valid_default() -> None:
    assert problems(config_dict()) == []
    cfg = parse(config_dict())
    assert cfg.timings.interval == 0.1 and cfg.timings.deadline < 1.0


def mod(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(config_dict())
    *keys, last = path.split(".")
    cur: Any = d
    for k in keys:
        cur = cur[int(k)] if k.isdigit() else cur[k]
    if value is DELETE:
        del cur[int(last) if last.isdigit() else last]
    else:
        cur[int(last) if last.isdigit() else last] = value
    return d


DELETE = object()
RES = "hierarchies.0.resources"

CASES = [
    (
        "unknown node in priority list",
        mod("hierarchies.0.nodes", ["n1", "n9"]),
        "unknown node 'n9'",
    ),
    (
        "dependency cycle",
        mod(
            RES,
            [
                {"name": "a", "kind": AGENT, "depends_on": ["b"]},
                {"name": "b", "kind": AGENT, "depends_on": ["a"]},
            ],
        ),
        "dependency cycle a -> b -> a",
    ),
    (
        "unknown dependency",
        mod(RES, [{"name": "a", "kind": AGENT, "depends_on": ["zz"]}]),
        "unknown resource 'zz'",
    ),
    ("missing kind", mod(RES, [{"name": "a"}]), "no kind"),
    ("unknown kind", mod(RES, [{"name": "a", "kind": "python:nosuch.module:X"}]), "cannot import"),
    ("one link", mod("links", config_dict()["links"][:1]), "at least 2"),
    (
        "node missing on a link",
        mod("links.1.addresses", {"n1": "127.0.0.1:1", "n2": "127.0.0.1:2"}),
        "node n3 has no address",
    ),
    ("unknown node on a link", mod("links.1.addresses.n9", "127.0.0.1:9"), "unknown node 'n9'"),
    (
        "deadline under 3 intervals",
        {**config_dict(), "timings": {"interval": 0.5, "deadline": 1.0}},
        "at least 3 intervals",
    ),
    ("short secret", mod("cluster.secret", "short"), "shorter than 16"),
    ("bad quorum mode", mod("cluster.quorum", "majority"), "quorum 'majority'"),
    ("bad failback", mod("hierarchies.0.failback", "sometimes"), "failback 'sometimes'"),
    ("shared data without fence", mod("hierarchies.0.shared_data", True), "split brain"),
    ("own-able not a resource", mod("hierarchies.0.ownable", "vol"), "own-able resource 'vol'"),
    ("duplicate address", mod("links.1.addresses.n1", "127.0.0.1:17000"), "also used by"),
]


@pytest.mark.parametrize(("case", "data", "needle"), CASES, ids=[c[0] for c in CASES])
def test_problems(case: str, data: dict[str, Any], needle: str) -> None:
    found = problems(data)
    assert any(needle in p for p in found), found


def test_unknown_keys_are_named() -> None:
    d = mod("hierarchies.0.resources.0.depend_on", ["x"])
    d["timings"] = {"intervall": 0.1}
    found = problems(d)
    assert "unknown key hierarchies[0].resources[0].depend_on (a typo?)" in found
    assert "unknown key timings.intervall (a typo?)" in found


def test_shared_data_allowed_unfenced() -> None:
    d = mod("hierarchies.0.shared_data", True)
    d["cluster"]["allow_unfenced"] = True
    assert problems(d) == []


def test_every_problem_at_once() -> None:
    d = mod("hierarchies.0.nodes", ["n9"])
    d["links"] = d["links"][:1]
    d["cluster"]["quorum"] = "x"
    assert len(problems(d)) >= 3


def test_type_errors_raise() -> None:
    with pytest.raises(ConfigError, match=r"timings\.interval"):
        parse({**config_dict(), "timings": {"interval": "fast"}})


def test_load_and_cli(tmp_path: Path) -> None:
    from ophiura.cli import main

    good = tmp_path / "ok.toml"
    good.write_text(TOML)
    good.chmod(0o600)
    cfg = load(good)
    assert list(cfg.hierarchies) == ["web"] and cfg.links[1].addresses["n2"] == ("127.0.0.1", 7003)
    r = CliRunner().invoke(main, ["cluster", "validate", str(good)])
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML.replace('nodes = ["n1", "n2"]', 'nodes = ["n1", "n7"]'))
    bad.chmod(0o600)
    r = CliRunner().invoke(main, ["cluster", "validate", str(bad)])
    assert r.exit_code == 1 and "unknown node 'n7'" in r.output
    r = CliRunner().invoke(main, ["cluster", "validate", str(tmp_path / "none.toml")])
    assert r.exit_code != 0


TOML = """
[cluster]
name = "demo"
secret = "0123456789abcdef0123456789abcdef"

[[nodes]]
name = "n1"
admin = "127.0.0.1:7100"
[[nodes]]
name = "n2"
admin = "127.0.0.1:7101"

[[links]]
name = "ring0"
addresses = { n1 = "127.0.0.1:7000", n2 = "127.0.0.1:7002" }
[[links]]
name = "ring1"
addresses = { n1 = "127.0.0.1:7001", n2 = "127.0.0.1:7003" }

[[hierarchies]]
name = "web"
nodes = ["n1", "n2"]
[[hierarchies.resources]]
name = "app"
kind = "python:tests.cluster.fake_agent:FakeAgent"
params = { dir = "/tmp" }
"""


def test_an_inline_secret_in_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """Issue 10: whoever reads the secret can forge heartbeats and admin requests. The message
    says how to fix it and never quotes the secret; a secret_file keeps the TOML shareable."""
    from ophiura.cli import main

    path = tmp_path / "cluster.toml"
    path.write_text(TOML)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others") as info:
        load(path)
    assert "chmod o-rwx" in str(info.value) and "secret_file" in str(info.value)
    assert "0123456789abcdef" not in str(info.value)
    r = CliRunner().invoke(main, ["cluster", "validate", str(path)])
    assert r.exit_code != 0 and "readable by others" in r.output and "Traceback" not in r.output
    path.chmod(0o640)  # a group (say, ophiura's) may read it
    assert load(path).name == "demo"
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    shared = tmp_path / "shared.toml"
    shared.write_text(TOML.replace('secret = "0123456789abcdef0123456789abcdef"',
                                   f'secret_file = "{secret}"'))  # fmt: skip
    shared.chmod(0o644)
    assert load(shared).secret == b"0123456789abcdef0123456789abcdef"
