"""nbd:// and nbds:// URIs as libnbd spells them, and NbdClient.connect_uri over TLS."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ophiura.block.memory import MemoryBlockDevice
from ophiura.nbd.client import NbdClient, NbdOptionError
from ophiura.nbd.security import NbdSecurity
from ophiura.nbd.uri import NbdUri, NbdUriError, parse_nbd_uri
from ophiura.testkit.certs import make_pki


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nbd://127.0.0.1", NbdUri("127.0.0.1")),
        ("nbd://127.0.0.1:10810/disk", NbdUri("127.0.0.1", 10810, "disk")),
        ("nbd://[::1]:10810/a%20b", NbdUri("::1", 10810, "a b")),
        ("nbds://h/disk", NbdUri("h", 10809, "disk", tls=True)),
        (
            "nbds://h:1/disk?tls-certificates=/etc/pki",
            NbdUri("h", 1, "disk", tls=True, certificates=Path("/etc/pki")),
        ),
    ],
)
def test_parse(text: str, expected: NbdUri) -> None:
    assert parse_nbd_uri(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("iscsi://h/iqn/0", "not nbd:// or nbds://"),
        ("nbd+unix:///disk?socket=/s", "not nbd:// or nbds://"),
        ("nbd:///disk", "no host"),
        ("nbds://alice@h/disk", "TLS-PSK"),
        ("nbds://h/disk?tls-psk-file=/k", "unsupported query tls-psk-file"),
        ("nbd://h/disk?tls-certificates=/d", "tls-certificates needs nbds://"),
        ("nbd://h:99999/disk", "out of range"),
    ],
)
def test_refused(text: str, message: str) -> None:
    with pytest.raises(NbdUriError, match=message):
        parse_nbd_uri(text)


async def test_connect_uri_over_tls(start_server: Callable[..., Any], tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    pki = make_pki(tmp_path / "pki")
    server = await start_server(
        {"disk": MemoryBlockDevice(1 << 20)},
        security=NbdSecurity.from_options(certificates=pki.server, verify_peer=True),
    )
    client = await NbdClient.connect_uri(
        f"nbds://127.0.0.1:{server.port}/disk?tls-certificates={pki.client}"
    )
    await client.write(0, b"u" * 512)
    assert await client.read(0, 512) == b"u" * 512
    await client.disconnect()
    with pytest.raises(NbdOptionError):
        await NbdClient.connect_uri(f"nbd://127.0.0.1:{server.port}/disk")
