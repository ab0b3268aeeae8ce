"""The sans-I/O core without sockets: handshake, option haggling, request decoding, the table."""

from __future__ import annotations

import pytest

from ophiura.nbd.constants import (
    CLIENT_FLAGS,
    EXPORT_NAME_PADDING,
    EXPORT_NAME_REPLY,
    GREETING,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    MAX_OPTION_DATA,
    NBDMAGIC,
    OPTION_HEADER,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    ClientFlag,
    Command,
    HandshakeFlag,
    Info,
    Option,
    Reply,
)
from ophiura.nbd.protocol import (
    NEED_DATA,
    TRANSITIONS,
    BadClientFlags,
    BadMagic,
    ClientFlagsReceived,
    ConnectionClosed,
    Disconnect,
    ExportChosen,
    ExportRefused,
    LocalProtocolError,
    OptionAnswered,
    Phase,
    Request,
    ServerConnection,
    SessionAborted,
    TooLarge,
    TooManyOptions,
    encode_simple_reply,
)

from .helpers import CATALOG, DISK, FLAGS, drive, go_data, new_conn, option, option_replies, request


def test_greeting_is_fixed_newstyle_with_no_zeroes() -> None:
    magic, opt_magic, flags = GREETING.unpack(ServerConnection.greeting())
    assert (magic, opt_magic) == (NBDMAGIC, IHAVEOPT)
    assert flags == HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES


def test_client_flags_move_to_options() -> None:
    conn = ServerConnection(CATALOG)
    assert drive(conn, CLIENT_FLAGS.pack(FLAGS)[:3]) == []
    assert drive(conn, CLIENT_FLAGS.pack(FLAGS)[3:]) == [ClientFlagsReceived(FLAGS)]
    assert conn.phase is Phase.OPTIONS


def test_unknown_client_flag_closes() -> None:
    conn = ServerConnection(CATALOG)
    with pytest.raises(BadClientFlags):
        drive(conn, CLIENT_FLAGS.pack(FLAGS | 0x80))
    assert conn.phase is Phase.CLOSED
    assert conn.next_event() is NEED_DATA


def test_go_sends_info_then_ack_and_enters_transmission() -> None:
    conn = new_conn()
    events = drive(conn, option(Option.GO, go_data("disk", (Info.NAME, Info.DESCRIPTION))))
    assert events == [ExportChosen(DISK, Option.GO)]
    assert conn.phase is Phase.TRANSMISSION
    replies = option_replies(conn.data_to_send())
    assert [r[1] for r in replies] == [Reply.INFO] * 4 + [Reply.ACK]
    assert replies[0][2] == INFO_EXPORT.pack(Info.EXPORT, DISK.size, DISK.flags)
    assert replies[1][2] == b"\x00\x01disk"
    assert replies[2][2] == b"\x00\x02the disk"
    assert INFO_BLOCK_SIZE.unpack(replies[3][2]) == (Info.BLOCK_SIZE, 512, 4096, 32 << 20)


def test_info_answers_and_stays_in_options() -> None:
    conn = new_conn()
    events = drive(conn, option(Option.INFO, go_data("disk")))
    assert events == [OptionAnswered(Option.INFO, Reply.ACK)]
    assert conn.phase is Phase.OPTIONS
    kinds = [r[1] for r in option_replies(conn.data_to_send())]
    assert kinds == [Reply.INFO, Reply.INFO, Reply.ACK]  # EXPORT and BLOCK_SIZE always


def test_default_export_answers_the_empty_name() -> None:
    conn = new_conn(default_export="disk")
    assert drive(conn, option(Option.GO, go_data(""))) == [ExportChosen(DISK, Option.GO)]
    conn = new_conn()
    assert drive(conn, option(Option.GO, go_data(""))) == [
        OptionAnswered(Option.GO, Reply.ERR_UNKNOWN)
    ]


def test_unknown_export_in_go_is_err_unknown_and_haggling_continues() -> None:
    conn = new_conn()
    assert drive(conn, option(Option.GO, go_data("nope"))) == [
        OptionAnswered(Option.GO, Reply.ERR_UNKNOWN)
    ]
    ((_, reply, message),) = option_replies(conn.data_to_send())
    assert reply == Reply.ERR_UNKNOWN and b"nope" in message
    assert drive(conn, option(Option.GO, go_data("disk"))) == [ExportChosen(DISK, Option.GO)]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00",
        (10).to_bytes(4, "big") + b"disk\x00\x00",  # name longer than the option
        go_data("disk") + b"\x00",  # trailing byte
        go_data("disk", (1,))[:-1],  # short info list
        (2).to_bytes(4, "big") + b"\xff\xfe" + b"\x00\x00",  # not UTF-8
    ],
)
def test_malformed_go_is_err_invalid(data: bytes) -> None:
    conn = new_conn()
    assert drive(conn, option(Option.GO, data)) == [OptionAnswered(Option.GO, Reply.ERR_INVALID)]
    assert conn.phase is Phase.OPTIONS


def test_list_names_every_export_with_description() -> None:
    conn = new_conn()
    assert drive(conn, option(Option.LIST)) == [OptionAnswered(Option.LIST, Reply.ACK)]
    replies = option_replies(conn.data_to_send())
    assert replies == [
        (Option.LIST, Reply.SERVER, b"\x00\x00\x00\x04diskthe disk"),
        (Option.LIST, Reply.SERVER, b"\x00\x00\x00\x02ro"),
        (Option.LIST, Reply.ACK, b""),
    ]


def test_list_with_data_is_err_invalid() -> None:
    conn = new_conn()
    assert drive(conn, option(Option.LIST, b"x")) == [
        OptionAnswered(Option.LIST, Reply.ERR_INVALID)
    ]


@pytest.mark.parametrize(
    "opt",
    [
        Option.STRUCTURED_REPLY,
        Option.STARTTLS,
        Option.LIST_META_CONTEXT,
        Option.SET_META_CONTEXT,
        Option.EXTENDED_HEADERS,
        Option.PEEK_EXPORT,
        77,
    ],
)
def test_unsupported_options_are_err_unsup(opt: int) -> None:
    conn = new_conn()
    assert drive(conn, option(opt)) == [OptionAnswered(opt, Reply.ERR_UNSUP)]
    ((echoed, reply, _),) = option_replies(conn.data_to_send())
    assert (echoed, reply) == (opt, Reply.ERR_UNSUP)


def test_abort_is_acknowledged_then_closed() -> None:
    conn = new_conn()
    assert drive(conn, option(Option.ABORT)) == [SessionAborted()]
    assert option_replies(conn.data_to_send()) == [(Option.ABORT, Reply.ACK, b"")]
    assert conn.phase is Phase.CLOSED


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_reply_and_padding(no_zeroes: bool) -> None:
    flags = ClientFlag.C_FIXED_NEWSTYLE | (ClientFlag.C_NO_ZEROES if no_zeroes else 0)
    conn = new_conn(flags)
    assert drive(conn, option(Option.EXPORT_NAME, b"disk")) == [
        ExportChosen(DISK, Option.EXPORT_NAME)
    ]
    out = conn.data_to_send()
    assert out[: EXPORT_NAME_REPLY.size] == EXPORT_NAME_REPLY.pack(DISK.size, DISK.flags)
    assert len(out) == EXPORT_NAME_REPLY.size + (0 if no_zeroes else EXPORT_NAME_PADDING)


def test_export_name_unknown_closes_without_reply() -> None:
    conn = new_conn()
    assert drive(conn, option(Option.EXPORT_NAME, b"nope")) == [ExportRefused("nope")]
    assert conn.data_to_send() == b""
    assert conn.phase is Phase.CLOSED


def test_bad_option_magic_closes() -> None:
    conn = new_conn()
    with pytest.raises(BadMagic):
        drive(conn, OPTION_HEADER.pack(0x1234, Option.LIST, 0))
    assert conn.phase is Phase.CLOSED


def test_oversized_option_is_skipped_and_refused_too_big() -> None:
    conn = new_conn()
    length = MAX_OPTION_DATA + 10
    header = OPTION_HEADER.pack(IHAVEOPT, Option.GO, length)
    assert drive(conn, header + bytes(100)) == []
    assert conn.buffered == 0  # skipped bytes are never kept
    events = drive(conn, bytes(length - 100))
    assert events == [OptionAnswered(Option.GO, Reply.ERR_TOO_BIG)]
    assert drive(conn, option(Option.GO, go_data("disk"))) == [ExportChosen(DISK, Option.GO)]


def test_huge_option_closes_before_buffering() -> None:
    conn = new_conn()
    with pytest.raises(TooLarge):
        drive(conn, OPTION_HEADER.pack(IHAVEOPT, Option.GO, 0xFFFFFFFF))
    with pytest.raises(TooLarge):
        drive(new_conn(), OPTION_HEADER.pack(IHAVEOPT, Option.EXPORT_NAME, MAX_OPTION_DATA + 1))


def test_options_are_bounded() -> None:
    conn = new_conn(max_options=3)
    drive(conn, option(Option.LIST) * 3)
    with pytest.raises(TooManyOptions):
        drive(conn, option(Option.LIST))


def _transmitting(**kwargs: object) -> ServerConnection:
    conn = new_conn(**kwargs)
    drive(conn, option(Option.GO, go_data("disk")))
    conn.data_to_send()
    return conn


def test_requests_decode_byte_by_byte() -> None:
    conn = _transmitting()
    wire = (
        request(Command.WRITE, 512, 4, handle=7, flags=1, data=b"abcd")
        + request(Command.READ, 0, 4096, handle=8)
        + request(Command.DISC, handle=9)
    )
    events: list[object] = []
    for i in range(len(wire)):
        events += drive(conn, wire[i : i + 1])
    assert events == [
        Request(Command.WRITE, 1, 7, 512, 4, b"abcd"),
        Request(Command.READ, 0, 8, 0, 4096),
        Disconnect(9),
    ]
    assert conn.phase is Phase.CLOSED
    assert conn.buffered == 0


def test_bad_request_magic_closes() -> None:
    conn = _transmitting()
    with pytest.raises(BadMagic):
        drive(conn, request(Command.READ, magic=0xDEADBEEF))
    assert conn.phase is Phase.CLOSED


def test_oversized_write_closes_before_buffering() -> None:
    conn = _transmitting(max_request=4096)
    drive(conn, request(Command.WRITE, 0, 4096, data=bytes(4096)))
    with pytest.raises(TooLarge):
        drive(conn, request(Command.WRITE, 0, 4097))
    # A large READ carries no payload: it is for the command layer to refuse (EINVAL).
    conn = _transmitting(max_request=4096)
    assert drive(conn, request(Command.READ, 0, 1 << 30)) == [
        Request(Command.READ, 0, 1, 0, 1 << 30)
    ]


def test_eof_is_an_event() -> None:
    conn = _transmitting()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.phase is Phase.CLOSED


def test_every_table_entry_is_reachable_and_unknown_events_raise() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert TRANSITIONS[Phase.CLOSED] == {}
    conn = new_conn()
    with pytest.raises(LocalProtocolError):
        conn._transition(Request(0, 0, 0, 0, 0))  # a request in the option phase


def test_simple_reply_header() -> None:
    assert SIMPLE_REPLY.unpack(encode_simple_reply(42, 5)) == (SIMPLE_REPLY_MAGIC, 5, 42)
