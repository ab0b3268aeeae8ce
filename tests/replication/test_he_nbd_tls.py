"""The HE's NBD frontend behind TLS and an allow-list (the options of `ophiura target`): the
TOML keys, a one-line error for a wrong certificates directory, and a live HE whose volume a
TLS client reads and writes while a plaintext client is refused."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from ophiura.cli import main
from ophiura.nbd.client import NbdClient, NbdOptionError
from ophiura.nbd.constants import Reply
from ophiura.nbd.security import NbdListen, NbdSecurity, TlsMode
from ophiura.nbd.tls import client_context
from ophiura.replication.he.config import ConfigError, build_config, load_toml
from ophiura.testkit.certs import Pki, make_pki

from .he_harness import SeHandle, he_config, start_he, wait_all_up

BASE = {"se": ["a=127.0.0.1:1"], "quorum": 1}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_toml_keys(tmp_path: Path) -> None:
    path = tmp_path / "he.toml"
    path.write_text(
        'quorum = 1\nse = ["a=127.0.0.1:1"]\nnbd = "0.0.0.0:10809"\n'
        f'tls_certificates = "{tmp_path}"\ntls_verify_peer = true\n'
        'nbd_allow = ["10.0.0.0/8", "198.51.100.7"]\nnbd_max_connections = 8\n'
    )
    cfg = build_config(load_toml(path))
    assert isinstance(cfg.nbd, NbdListen) and cfg.nbd.address == ("0.0.0.0", 10809)
    sec = cfg.nbd.security
    assert sec.tls is TlsMode.REQUIRE and sec.certificates == tmp_path and sec.verify_peer
    assert [str(n) for n in sec.allow] == ["10.0.0.0/8", "198.51.100.7/32"]
    assert sec.max_connections == 8 and sec.exposure_warning("0.0.0.0") is None


def test_the_documented_example_loads() -> None:
    """docs/replication.md's NBD block, with the rest of a configuration around it."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "replication.md").read_text()
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if "tls_certificates" in b]
    cfg = build_config({**BASE, **tomllib.loads(block)})
    assert isinstance(cfg.nbd, NbdListen) and cfg.nbd.security.authenticated
    assert cfg.nbd.security.max_connections == 32


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"tls_certificates": "/x"}, "NBD options need nbd = HOST:PORT"),
        ({"nbd": "127.0.0.1:1", "tls": "on"}, "--tls on: give --tls-certificates"),
        ({"nbd": "127.0.0.1:1", "tls": "yes", "tls_certificates": "/x"}, "not off, on or require"),
        ({"nbd": "127.0.0.1:1", "tls_verify_peer": "yes"}, "tls_verify_peer: 'yes' is not true"),
        ({"nbd": "127.0.0.1:1", "nbd_allow": ["10.0.0.0/40"]}, "'10.0.0.0/40' is not"),
        ({"nbd": "127.0.0.1:1", "nbd_max_connections": 0}, "must be at least 1"),
        ({"nbd": "127.0.0.1:1", "nbd_max_connections": "x"}, "is not an integer"),
    ],
)
def test_bad_nbd_keys_are_config_errors(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({**BASE, **extra})


def test_he_cli_names_a_missing_certificate_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["he", "--se", "a=127.0.0.1:1", "--quorum", "1", "--nbd", "127.0.0.1:0",
         "--tls-certificates", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code != 0
    assert f"{tmp_path}/server-cert.pem is missing" in result.output
    assert "Traceback" not in result.output


async def test_he_serves_its_volume_over_tls_only(
    ses: list[SeHandle], tmp_path: Path, pki: Pki
) -> None:
    security = NbdSecurity.from_options(
        certificates=pki.server, verify_peer=True, allow=["127.0.0.0/8"], max_connections=4
    )
    he = await start_he(he_config(ses, nbd=NbdListen("127.0.0.1", 0, security)), tmp_path)
    try:
        await wait_all_up(he)
        assert he.frontends.nbd is not None
        port = he.frontends.nbd.port
        client = await NbdClient.connect(
            "127.0.0.1", port, "vol", timeout=10, tls=client_context(pki.client)
        )
        await client.write(0, b"t" * 4096, fua=True)
        assert await client.read(0, 4096) == b"t" * 4096
        with pytest.raises(NbdOptionError) as err:
            await NbdClient.connect("127.0.0.1", port, "vol", timeout=10)
        assert err.value.reply == Reply.ERR_TLS_REQD
        assert await client.read(0, 4096) == b"t" * 4096
        await client.disconnect()
    finally:
        await he.stop()
