"""Random bytes into the server core: typed protocol errors or events, never anything else, and
never more buffered than one option or one request."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ophiura.nbd.constants import (
    CLIENT_FLAGS,
    IHAVEOPT,
    MAX_OPTION_DATA,
    OPTION_HEADER,
    REQUEST,
    REQUEST_MAGIC,
    Command,
    Option,
)
from ophiura.nbd.protocol import NEED_DATA, NbdProtocolError, Phase, ServerConnection

from .helpers import CATALOG, FLAGS, go_data, option

MAX_REQ = 64 * 1024
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed(conn: ServerConnection, chunks: list[bytes]) -> None:
    """Feed chunks; the core may only raise NbdProtocolError, and stays bounded."""
    for chunk in chunks:
        conn.receive_data(chunk)
        for _ in range(10_000):
            try:
                event = conn.next_event()
            except NbdProtocolError:
                assert conn.phase is Phase.CLOSED
                return
            if event is NEED_DATA:
                break
        conn.data_to_send()
        # Bounded: at most one option (or one write request) plus the chunk just fed.
        assert conn.buffered <= max(MAX_OPTION_DATA, MAX_REQ) + REQUEST.size + len(chunk)


chunks = st.lists(st.binary(max_size=300), max_size=12)


@FUZZ
@given(chunks)
def test_random_bytes_from_the_greeting(data: list[bytes]) -> None:
    feed(ServerConnection(CATALOG, max_request=MAX_REQ), data)


option_frames = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda opt, data: OPTION_HEADER.pack(IHAVEOPT, opt, len(data)) + data,
        st.sampled_from([*Option, 0, 12, 0xFFFFFFFF]),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda opt, length: OPTION_HEADER.pack(IHAVEOPT, opt, length),
        st.sampled_from(list(Option)),
        st.integers(0, 0xFFFFFFFF),
    ),
    st.builds(
        lambda opt, name, infos: option(opt, go_data(name, tuple(infos))),
        st.sampled_from([Option.GO, Option.INFO]),
        st.sampled_from(["disk", "ro", "", "nope"]),
        st.lists(st.integers(0, 0xFFFF), max_size=5),
    ),
)


@FUZZ
@given(st.lists(option_frames, max_size=10))
def test_random_options(frames: list[bytes]) -> None:
    conn = ServerConnection(CATALOG, max_request=MAX_REQ)
    feed(conn, [CLIENT_FLAGS.pack(FLAGS), *frames])


request_frames = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda magic, flags, cmd, handle, offset, length, tail: (
            REQUEST.pack(magic, flags, cmd, handle, offset, length) + tail
        ),
        st.sampled_from([REQUEST_MAGIC, REQUEST_MAGIC, 0]),
        st.integers(0, 0xFFFF),
        st.sampled_from([*Command, 9, 0xFFFF]),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 0xFFFFFFFF),
        st.binary(max_size=128),
    ),
)


@FUZZ
@given(st.lists(request_frames, max_size=10))
def test_random_requests(frames: list[bytes]) -> None:
    conn = ServerConnection(CATALOG, max_request=MAX_REQ)
    feed(conn, [CLIENT_FLAGS.pack(FLAGS), option(Option.GO, go_data("disk")), *frames])
