"""TLS, the allow-list and the connection cap on a live server, with our own client and raw
sockets: each refusal is clean (the client sees a refusal or a closed connection), leaves one
log line naming the address and the reason, and a client already working keeps working.
Certificates: a CA, server and client made with openssl per module, and a second, unrelated CA."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ophiura.block.memory import MemoryBlockDevice
from ophiura.nbd.client import NbdClient, NbdClientError, NbdOptionError
from ophiura.nbd.constants import GREETING, Option, Reply
from ophiura.nbd.security import NbdSecurity
from ophiura.nbd.tls import TlsConfigError, client_context, server_context
from ophiura.testkit.certs import Pki, make_pki
from ophiura.testkit.waiting import wait_for_async

MiB = 1 << 20
Starter = Callable[..., Any]
SERVER_LOG = "ophiura.nbd.server"
# What a refused client may see: an option error, a TLS alert, or the connection closing.
REFUSED = (NbdClientError, OSError, asyncio.IncompleteReadError)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Path:
    """A client directory trusting our CA but holding a certificate from another CA."""
    other = make_pki(tmp_path_factory.mktemp("other"), name="someone else")
    mixed = tmp_path_factory.mktemp("stranger")
    shutil.copy(pki.client / "ca-cert.pem", mixed / "ca-cert.pem")
    for name in ("client-cert.pem", "client-key.pem"):
        shutil.copy(other.client / name, mixed / name)
    return mixed


async def tls_server(start: Starter, pki: Pki, **options: Any) -> Any:
    security = NbdSecurity.from_options(certificates=pki.server, **options)
    return await start({"disk": MemoryBlockDevice(4 * MiB)}, security=security)


async def connect(server: Any, certs: Path | None) -> NbdClient:
    tls = client_context(certs) if certs is not None else None
    return await NbdClient.connect("127.0.0.1", server.port, "disk", timeout=5, tls=tls)


async def round_trip(client: NbdClient, offset: int, byte: int) -> None:
    data = bytes([byte]) * 65536
    await client.write(offset, data, fua=True)
    assert await client.read(offset, len(data)) == data


async def logged(caplog: pytest.LogCaptureFixture, *needles: str) -> str:
    """Wait for the server's log line holding every needle; return it."""

    def line() -> str | None:
        for rec in caplog.records:
            msg = rec.getMessage()
            if rec.name == SERVER_LOG and all(n in msg for n in needles):
                return msg
        return None

    await wait_for_async(lambda: line() is not None, 10, f"a log line with {needles}")
    found = line()
    assert found is not None
    return found


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SERVER_LOG)


async def test_tls_round_trip_with_a_client_certificate(
    start_server: Starter, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    server = await tls_server(start_server, pki, verify_peer=True)
    client = await connect(server, pki.client)
    await round_trip(client, MiB, 0x5A)
    assert await client.read(0, 4096) == bytes(4096)
    await client.disconnect()
    line = await logged(caplog, "TLS up", "CN=ophiura test client")
    assert "127.0.0.1" in line
    await wait_for_async(lambda: not server.connections, 10, "the TLS connection to go")


async def test_list_exports_over_tls(start_server: Starter, pki: Pki) -> None:
    server = await tls_server(start_server, pki)
    tls = client_context(pki.client)
    assert await NbdClient.list_exports("127.0.0.1", server.port, tls=tls) == ["disk"]


async def test_plaintext_client_is_refused_when_tls_is_required(
    start_server: Starter, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    server = await tls_server(start_server, pki)
    working = await connect(server, pki.client)
    with pytest.raises(NbdOptionError) as err:
        await connect(server, None)
    assert err.value.reply == Reply.ERR_TLS_REQD and err.value.option == Option.GO
    line = await logged(caplog, "refused: TLS required")
    assert "127.0.0.1:" in line
    await round_trip(working, 0, 0x11)
    await working.disconnect()


async def test_export_name_before_tls_closes_the_connection(
    start_server: Starter, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    from ophiura.nbd.client import _handshake
    from ophiura.nbd.constants import IHAVEOPT, OPTION_HEADER

    server = await tls_server(start_server, pki)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await _handshake(reader, writer)
    writer.write(OPTION_HEADER.pack(IHAVEOPT, Option.EXPORT_NAME, 4) + b"disk")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not one byte of the export
    writer.close()
    await logged(caplog, "refused: TLS required", "NBD_OPT_EXPORT_NAME")


async def test_tls_on_serves_both(start_server: Starter, pki: Pki) -> None:
    server = await tls_server(start_server, pki, tls="on")
    plain, secure = await connect(server, None), await connect(server, pki.ca_only)
    await round_trip(plain, 0, 1)
    await round_trip(secure, MiB, 2)
    await plain.disconnect()
    await secure.disconnect()


async def test_a_certificate_from_another_ca_is_refused(
    start_server: Starter, pki: Pki, stranger: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Verification applies whenever a client presents a certificate, required or not."""
    for verify_peer in (True, False):
        caplog.clear()
        server = await tls_server(start_server, pki, verify_peer=verify_peer)
        working = await connect(server, pki.client)
        with pytest.raises(REFUSED):
            client = await connect(server, stranger)
            await client.read(0, 512)  # (TLS 1.3: the alert may come after the handshake)
        line = await logged(caplog, "refused: TLS handshake failed")
        assert "127.0.0.1:" in line and "BEGIN" not in line
        await round_trip(working, 0, 0x22)
        await working.disconnect()


async def test_no_client_certificate_is_refused_only_with_verify_peer(
    start_server: Starter, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    server = await tls_server(start_server, pki, verify_peer=True)
    working = await connect(server, pki.client)
    with pytest.raises(REFUSED) as refused:
        client = await connect(server, pki.ca_only)
        await client.read(0, 512)
    assert isinstance(refused.value, NbdClientError)  # the client says it in its own terms
    await logged(caplog, "refused: TLS handshake failed", "CERTIFICATE")
    await round_trip(working, 0, 0x33)
    await working.disconnect()
    optional = await tls_server(start_server, pki, verify_peer=False)
    client = await connect(optional, pki.ca_only)
    await round_trip(client, 0, 0x44)
    await client.disconnect()


async def test_client_refuses_a_server_it_cannot_verify(
    start_server: Starter, pki: Pki, stranger: Path, tmp_path: Path
) -> None:
    server = await tls_server(start_server, pki)
    other_ca = tmp_path / "other"
    other_ca.mkdir()
    other = make_pki(tmp_path / "otherpki", name="elsewhere")
    shutil.copy(other.client / "ca-cert.pem", other_ca / "ca-cert.pem")
    with pytest.raises(NbdClientError, match="TLS handshake failed"):
        await connect(server, other_ca)


async def test_address_outside_the_allow_list_is_closed_at_once(
    start_server: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    device = MemoryBlockDevice(MiB)
    open_ = await start_server({"disk": device}, security=NbdSecurity.from_options(
        allow=["127.0.0.0/8"]))  # fmt: skip
    working = await NbdClient.connect("127.0.0.1", open_.port, "disk", timeout=5)
    closed = await start_server({"disk": device}, security=NbdSecurity.from_options(
        allow=["10.0.0.0/8", "198.51.100.0/24"]))  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", closed.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # not even the greeting
    writer.close()
    line = await logged(caplog, "refused: address not in the allow-list")
    assert "127.0.0.1:" in line
    assert closed.refused == 1 and not closed.connections
    await round_trip(working, 0, 0x55)
    await working.disconnect()


async def test_a_connection_flood_past_the_cap_is_refused(
    start_server: Starter, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    cap, flood = 4, 40
    server = await tls_server(start_server, pki, max_connections=cap)
    working = await connect(server, pki.client)

    async def knock() -> tuple[asyncio.StreamWriter, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            return writer, await asyncio.wait_for(reader.readexactly(GREETING.size), 5)
        except asyncio.IncompleteReadError as exc:
            return writer, exc.partial

    # the flood and the working client's I/O at the same time
    results, _ = await asyncio.gather(
        asyncio.gather(*(knock() for _ in range(flood))), round_trip(working, 0, 0x66)
    )
    greeted = [w for w, got in results if len(got) == GREETING.size]
    assert len(greeted) == cap - 1  # the working client holds one slot
    assert server.refused == flood - (cap - 1)
    line = await logged(caplog, "refused: connection limit (4) reached")
    assert "127.0.0.1:" in line
    await round_trip(working, MiB, 0x77)
    for writer, _ in results:
        writer.close()
    await wait_for_async(lambda: len(server.connections) == 1, 10, "the flood to be gone")
    again = await connect(server, pki.client)  # slots come back when connections close
    await round_trip(again, 2 * MiB, 0x88)
    await again.disconnect()
    await working.disconnect()


def test_certificate_directory_errors_name_files_not_contents(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="is not a directory"):
        server_context(tmp_path / "nope")
    with pytest.raises(TlsConfigError, match=r"server-cert\.pem is missing"):
        server_context(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(pki.server, bad)
    secret = (bad / "server-key.pem").read_text()
    (bad / "server-key.pem").write_text(secret.replace("A", "B", 5)[:200])
    with pytest.raises(TlsConfigError) as err:
        server_context(bad)
    assert "do not load" in str(err.value) and secret[40:80] not in str(err.value)
    no_ca = tmp_path / "noca"
    shutil.copytree(pki.server, no_ca)
    (no_ca / "ca-cert.pem").unlink()
    with pytest.raises(TlsConfigError, match=r"ca-cert\.pem is missing"):
        server_context(no_ca, verify_peer=True)
