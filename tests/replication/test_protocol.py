"""The HE<->SE codec without sockets: handshake, frames, MACs, messages, and fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ophiura.replication.wire import frames, messages

SECRET = b"s" * 32


def pair(
    client_secret: bytes = SECRET, server_secret: bytes = SECRET
) -> tuple[frames.Connection, frames.Connection]:
    """A client and server connection with the handshake run through to the end."""
    client = frames.Connection("client", "he", client_secret)
    server = frames.Connection("server", "se1", server_secret)
    pump(client, server)
    return client, server


def pump(client: frames.Connection, server: frames.Connection) -> list[object]:
    """Shuttle handshake bytes until quiet; returns every event either side produced."""
    events: list[object] = []
    for _ in range(10):
        out_c = b"".join(client.data_to_send())
        if out_c:
            events += server.receive_data(out_c)
        out_s = b"".join(server.data_to_send())
        if out_s:
            events += client.receive_data(out_s)
        if not out_c and not out_s:
            break
    return events


def frame(conn: frames.Connection, msg: messages.Message) -> bytes:
    return b"".join(bytes(b) for b in conn.send(msg))


def test_handshake_authenticates_both_sides() -> None:
    client = frames.Connection("client", "he", SECRET)
    server = frames.Connection("server", "se1", SECRET)
    events = pump(client, server)
    assert frames.Authenticated("he") in events and frames.Authenticated("se1") in events
    assert client.authenticated and server.authenticated
    assert client.peer_name == "se1" and server.peer_name == "he"


def test_wrong_secret_is_rejected_by_the_server_first() -> None:
    client = frames.Connection("client", "he", b"w" * 32)
    server = frames.Connection("server", "se1", SECRET)
    server.receive_data(b"".join(client.data_to_send()))  # HELLO
    client.receive_data(b"".join(server.data_to_send()))  # CHALLENGE
    with pytest.raises(frames.AuthenticationFailed, match="failed to prove"):
        server.receive_data(b"".join(client.data_to_send()))  # PROOF
    with pytest.raises(frames.AuthenticationFailed, match="rejected"):
        client.receive_data(b"".join(server.data_to_send()))  # AUTH_FAIL


def test_impostor_server_is_detected_by_the_client() -> None:
    client = frames.Connection("client", "he", SECRET)
    fake = frames.Connection("server", "se1", b"x" * 32)
    fake.receive_data(b"".join(client.data_to_send()))
    client.receive_data(b"".join(fake.data_to_send()))
    # The impostor cannot check the client's proof; suppose it answers with its own proof.
    forged = fake._transcript(b"server-proof", *fake._nonces())
    with pytest.raises(frames.AuthenticationFailed, match="server 'se1' failed"):
        client.receive_data(struct.pack("<I", 33) + bytes([0xF5]) + forged)


def test_messages_round_trip_out_of_order_ids() -> None:
    client, server = pair()
    data = bytes(range(256)) * 16
    msgs = [
        messages.Write(7, "vol", 3, 0xABC, 41, 42, 4096, data),
        messages.OpenVolume(1, "vol", 1 << 30, 4096),
        messages.Recover(9, "vol", 3, "replay", "se2", "127.0.0.1", 7701, 100, 5 << 20),
        messages.Ping(2, "x"),
    ]
    wire = b"".join(frame(client, m) for m in msgs)
    assert server.receive_data(wire) == msgs
    replies = [
        messages.Ack(7, 42),
        messages.Error(9, messages.ErrorCode.BUSY, "full"),
        messages.StaleEpochMsg(1, 5),
    ]
    wire = b"".join(frame(server, m) for m in replies)
    # byte by byte: framing must not depend on how TCP splits the stream
    got: list[object] = []
    for i in range(len(wire)):
        got += client.receive_data(wire[i : i + 1])
    assert got == replies


def test_write_data_is_not_copied_on_send() -> None:
    client, _ = pair()
    data = bytearray(b"d" * 4096)
    buffers = client.send(messages.Write(1, "v", 1, 0, 0, 1, 0, data))
    assert any(b is data for b in buffers)


def test_replayed_frame_is_rejected() -> None:
    client, server = pair()
    f = frame(client, messages.Ping(1))
    assert server.receive_data(f) == [messages.Ping(1)]
    with pytest.raises(frames.BadMac):
        server.receive_data(f)


def test_reordered_frames_are_rejected() -> None:
    client, server = pair()
    f1, f2 = frame(client, messages.Ping(1)), frame(client, messages.Ping(2))
    with pytest.raises(frames.BadMac):
        server.receive_data(f2 + f1)


def test_tampered_frame_is_rejected_and_connection_stays_failed() -> None:
    client, server = pair()
    f = bytearray(frame(client, messages.Write(1, "v", 1, 0, 0, 1, 0, b"a" * 512)))
    f[40] ^= 1
    with pytest.raises(frames.BadMac):
        server.receive_data(bytes(f))
    with pytest.raises(messages.ProtocolError):
        server.receive_data(frame(client, messages.Ping(2)))


def test_huge_length_is_refused_before_buffering() -> None:
    _, server = pair()
    with pytest.raises(frames.FrameTooLarge):
        server.receive_data(struct.pack("<I", 0xFFFFFFFF))
    fresh = frames.Connection("server", "se1", SECRET)
    with pytest.raises(frames.FrameTooLarge):
        fresh.receive_data(struct.pack("<I", 100_000))


def test_message_before_authentication_is_refused() -> None:
    server = frames.Connection("server", "se1", SECRET)
    with pytest.raises(frames.AuthenticationFailed):
        server.receive_data(struct.pack("<I", 9) + bytes([1]) + bytes(8))


def test_volume_list_and_log_records_round_trip() -> None:
    states = [
        messages.VolumeStateMsg(0, 1, 2, 3, 512, 0, 0, "a", "up"),
        messages.VolumeStateMsg(0, 4, 5, 6, 4096, 7, 8, "b", "gap", "why"),
    ]
    assert messages.decode_volume_list(messages.encode_volume_list(states)) == states
    recs = [
        messages.WireLogRecord(1, 2, 4096, 3, messages.KIND_WRITE, b"abc"),
        messages.WireLogRecord(2, 2, 0, 1 << 20, messages.KIND_TRIM, b""),
    ]
    assert messages.unpack_log_records(messages.pack_log_records(recs), 2) == recs
    with pytest.raises(messages.MalformedMessage):
        messages.unpack_log_records(messages.pack_log_records(recs)[:-1], 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_before_auth_raise_only_protocol_errors(blob: bytes) -> None:
    server = frames.Connection("server", "se1", SECRET)
    with contextlib.suppress(messages.ProtocolError):
        server.receive_data(blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_fuzz_authenticated_garbage_and_truncation(blob: bytes, cut: int) -> None:
    client, server = pair()
    good = frame(client, messages.Write(1, "v", 1, 0, 0, 1, 0, blob))
    try:
        out = server.receive_data(good[:cut])
        out += server.receive_data(good[cut:])
        assert out == [messages.Write(1, "v", 1, 0, 0, 1, 0, blob)]
        server.receive_data(blob)
    except messages.ProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_fuzz_decode_body_raises_only_malformed(body: bytes) -> None:
    try:
        msg = messages.decode_body(body)
    except messages.MalformedMessage:
        return
    head, tail = messages.encode_body(msg)
    assert head + (bytes(tail) if tail is not None else b"") == body
