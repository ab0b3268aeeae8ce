"""The sans-I/O core's TLS modes: STARTTLS and its transition, FORCEDTLS refusals, and plaintext
injected after STARTTLS (bytes that would be read as options once TLS is up)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ophiura.nbd.constants import IHAVEOPT, MAX_OPTION_DATA, OPTION_HEADER, Option, Reply
from ophiura.nbd.protocol import (
    NEED_DATA,
    TLS_REQUIRED,
    TRANSITIONS,
    ConnectionClosed,
    DataBeforeTls,
    ExportChosen,
    ExportRefused,
    LocalProtocolError,
    NbdProtocolError,
    OptionAnswered,
    Phase,
    SessionAborted,
    StartTls,
    TlsEstablished,
    TlsMode,
)

from .helpers import DISK, drive, go_data, new_conn, option, option_replies


def test_the_table_has_the_tls_phase() -> None:
    assert TRANSITIONS[Phase.OPTIONS][StartTls] is Phase.STARTING_TLS
    assert TRANSITIONS[Phase.STARTING_TLS] == {
        TlsEstablished: Phase.OPTIONS,
        ConnectionClosed: Phase.CLOSED,
    }


def test_off_refuses_starttls_unsup() -> None:
    conn = new_conn()
    assert drive(conn, option(Option.STARTTLS)) == [
        OptionAnswered(Option.STARTTLS, Reply.ERR_UNSUP)
    ]
    assert conn.phase is Phase.OPTIONS


@pytest.mark.parametrize("mode", [TlsMode.ON, TlsMode.REQUIRE])
def test_starttls_acks_then_waits_for_the_handshake(mode: TlsMode) -> None:
    conn = new_conn(tls=mode)
    assert drive(conn, option(Option.STARTTLS)) == [StartTls()]
    assert option_replies(conn.data_to_send()) == [(Option.STARTTLS, Reply.ACK, b"")]
    assert conn.phase is Phase.STARTING_TLS and not conn.tls_active
    assert conn.tls_established() == TlsEstablished()
    assert conn.phase is Phase.OPTIONS and conn.tls_active
    # over TLS: haggling resumes, and a second STARTTLS is invalid (no nesting, no downgrade)
    assert drive(conn, option(Option.STARTTLS)) == [
        OptionAnswered(Option.STARTTLS, Reply.ERR_INVALID)
    ]
    conn.data_to_send()
    assert drive(conn, option(Option.GO, go_data("disk"))) == [ExportChosen(DISK, Option.GO)]
    assert all(r != Reply.ERR_TLS_REQD for _, r, _ in option_replies(conn.data_to_send()))


def test_starttls_with_data_is_invalid() -> None:
    conn = new_conn(tls=TlsMode.REQUIRE)
    assert drive(conn, option(Option.STARTTLS, b"x")) == [
        OptionAnswered(Option.STARTTLS, Reply.ERR_INVALID)
    ]
    assert conn.phase is Phase.OPTIONS


def test_plaintext_pipelined_after_starttls_is_a_protocol_error() -> None:
    """A man in the middle appending an option to STARTTLS must not get it executed."""
    conn = new_conn(tls=TlsMode.ON)
    conn.receive_data(option(Option.STARTTLS) + option(Option.LIST))
    assert conn.next_event() == StartTls()
    with pytest.raises(DataBeforeTls):
        conn.next_event()
    assert conn.phase is Phase.CLOSED


def test_eof_while_starting_tls_closes() -> None:
    conn = new_conn(tls=TlsMode.ON)
    drive(conn, option(Option.STARTTLS))
    assert drive(conn, b"") == [ConnectionClosed()]
    assert conn.phase is Phase.CLOSED


def test_tls_established_outside_the_handshake_is_a_local_error() -> None:
    conn = new_conn(tls=TlsMode.ON)
    with pytest.raises(LocalProtocolError):
        conn.tls_established()


@pytest.mark.parametrize(
    "opt, data",
    [
        (Option.LIST, b""),
        (Option.INFO, go_data("disk")),
        (Option.GO, go_data("disk")),
        (Option.STRUCTURED_REPLY, b""),
        (77, b""),
    ],
)
def test_require_answers_tls_reqd_before_tls(opt: int, data: bytes) -> None:
    conn = new_conn(tls=TlsMode.REQUIRE)
    assert drive(conn, option(opt, data)) == [OptionAnswered(opt, Reply.ERR_TLS_REQD)]
    ((echoed, reply, _),) = option_replies(conn.data_to_send())
    assert (echoed, reply) == (opt, Reply.ERR_TLS_REQD)
    assert conn.phase is Phase.OPTIONS and conn.export is None


def test_require_refuses_an_oversized_option_tls_reqd_too() -> None:
    conn = new_conn(tls=TlsMode.REQUIRE)
    size = MAX_OPTION_DATA + 1
    raw = OPTION_HEADER.pack(IHAVEOPT, Option.INFO, size) + bytes(size)
    assert drive(conn, raw) == [OptionAnswered(Option.INFO, Reply.ERR_TLS_REQD)]


def test_require_lets_abort_through() -> None:
    conn = new_conn(tls=TlsMode.REQUIRE)
    assert drive(conn, option(Option.ABORT)) == [SessionAborted()]


def test_require_closes_on_export_name_before_tls() -> None:
    conn = new_conn(tls=TlsMode.REQUIRE)
    assert drive(conn, option(Option.EXPORT_NAME, b"disk")) == [ExportRefused("disk", TLS_REQUIRED)]
    assert conn.phase is Phase.CLOSED and conn.export is None
    assert conn.data_to_send() == b""  # not a byte of the export's size or flags


def test_on_serves_plaintext_clients() -> None:
    conn = new_conn(tls=TlsMode.ON)
    assert drive(conn, option(Option.GO, go_data("disk"))) == [ExportChosen(DISK, Option.GO)]


# ---- fuzzing: random option streams in each TLS mode ---------------------------------------
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
frames = st.lists(
    st.one_of(
        st.builds(
            lambda opt, data: option(opt, data),
            st.sampled_from([*Option, 0, 99]),
            st.sampled_from([b"", b"disk", go_data("disk"), go_data("ro", (1, 2)), b"\xff"]),
        ),
        st.binary(max_size=40),
    ),
    max_size=12,
)


@FUZZ
@given(st.sampled_from(list(TlsMode)), frames, st.booleans())
def test_no_export_without_tls_when_required(
    mode: TlsMode, stream: list[bytes], handshake_ok: bool
) -> None:
    """Whatever the client sends, REQUIRE never reaches an export (nor answers anything but
    STARTTLS/ABORT/TLS_REQD) before TLS is up, and STARTTLS is the only way to get there."""
    conn = new_conn(tls=mode)
    for frame in stream:
        conn.receive_data(frame)
        while True:
            try:
                event = conn.next_event()
            except NbdProtocolError:
                assert conn.phase is Phase.CLOSED
                return
            if event is NEED_DATA:
                break
            if isinstance(event, ExportChosen):
                assert mode is not TlsMode.REQUIRE or conn.tls_active
            if isinstance(event, StartTls):
                assert mode is not TlsMode.OFF and not conn.tls_active
        out = option_replies(conn.data_to_send()) if conn.phase is Phase.OPTIONS else []
        if mode is TlsMode.REQUIRE and not conn.tls_active:
            allowed = {Option.STARTTLS, Option.ABORT}
            assert all(r == Reply.ERR_TLS_REQD or o in allowed for o, r, _ in out)
        if conn.phase is Phase.STARTING_TLS:
            if not handshake_ok:
                return  # the I/O layer closes the connection
            conn.tls_established()  # (the server only calls it with nothing buffered)
        if conn.phase is Phase.CLOSED:
            return
