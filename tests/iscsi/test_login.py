from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ophiura.iscsi import chap
from ophiura.iscsi.chap import Credentials
from ophiura.iscsi.login import (
    TRANSITIONS,
    LoginEvent,
    LoginMachine,
    LoginRequest,
    LoginState,
    Status,
    TargetInfo,
)
from ophiura.iscsi.text import encode_text, parse_text

IQN = "iqn.2025-01.org.ophiura:t"
CREDS = Credentials("alice", "secret-secret", "target", "reverse-secret")


def req(csg: int, nsg: int, transit: bool, pairs: dict[str, str], isid: int = 1) -> LoginRequest:
    return LoginRequest(transit, False, csg, nsg, 0, 0, isid, 0, 0, 1, 0, 0, encode_text(pairs))


def machine(creds: Credentials | None = None) -> LoginMachine:
    return LoginMachine({IQN: TargetInfo(IQN, 1, None, creds)})


IDENT = {"InitiatorName": "iqn.i", "TargetName": IQN, "SessionType": "Normal"}


def test_no_auth_straight_to_full_feature() -> None:
    m = machine()
    r = m.receive(req(1, 3, True, {**IDENT, "MaxBurstLength": "65536"}))
    assert r.complete and r.transit and r.nsg == 3 and r.status == 0
    keys = dict(r.pairs)
    assert keys["TargetPortalGroupTag"] == "1" and keys["MaxBurstLength"] == "65536"
    assert m.state is LoginState.FULL_FEATURE and m.params is not None


def test_missing_initiator_name_and_unknown_target() -> None:
    r = machine().receive(req(1, 3, True, {"TargetName": IQN}))
    assert r.failed and r.status == Status.MISSING_PARAMETER == 0x0207
    r = machine().receive(req(1, 3, True, {"InitiatorName": "i", "TargetName": "iqn.nope"}))
    assert r.failed and r.status == Status.NOT_FOUND == 0x0203


def test_unsupported_version_and_bad_transition() -> None:
    r = machine().receive(
        LoginRequest(True, False, 1, 3, 1, 1, 1, 0, 0, 1, 0, 0, encode_text(IDENT))
    )
    assert r.status == Status.UNSUPPORTED_VERSION
    r = machine().receive(req(1, 0, True, IDENT))  # operational -> security: no entry
    assert r.failed and r.status == Status.INITIATOR_ERROR
    assert LoginEvent.SEC not in TRANSITIONS[LoginState.OPERATIONAL]


def chap_login(
    m: LoginMachine, secret: str, mutual: bool = False, reflect: bool = False
) -> tuple[LoginMachine, object]:
    r = m.receive(req(0, 1, True, {**IDENT, "AuthMethod": "CHAP,None"}))
    assert dict(r.pairs)["AuthMethod"] == "CHAP" and not r.transit
    r = m.receive(req(0, 1, False, {"CHAP_A": "7,5"}))
    keys = dict(r.pairs)
    ident, challenge = int(keys["CHAP_I"]), chap.decode_binary(keys["CHAP_C"])
    answer = {
        "CHAP_N": "alice",
        "CHAP_R": chap.encode_hex(chap.chap_response(ident, secret, challenge)),
    }
    my = challenge if reflect else b"0123456789abcdef"
    if mutual:
        answer.update({"CHAP_I": "9", "CHAP_C": chap.encode_hex(my)})
    return m, m.receive(req(0, 1, True, answer))


def test_chap_success_then_operational() -> None:
    m, r = chap_login(machine(CREDS), "secret-secret")
    assert r.transit and r.status == 0 and m.state is LoginState.SECURITY_DONE  # type: ignore
    r2 = m.receive(req(1, 3, True, {"HeaderDigest": "None"}))
    assert r2.complete


def test_chap_wrong_secret_is_auth_failure() -> None:
    _, r = chap_login(machine(CREDS), "wrong")
    assert r.failed and r.status == Status.AUTH_FAILURE == 0x0201  # type: ignore


def test_mutual_chap_and_reflection_refused() -> None:
    _, r = chap_login(machine(CREDS), "secret-secret", mutual=True)
    keys = dict(r.pairs)  # type: ignore
    expect = chap.chap_response(9, "reverse-secret", b"0123456789abcdef")
    assert keys["CHAP_N"] == "target" and chap.decode_binary(keys["CHAP_R"]) == expect
    _, r = chap_login(machine(CREDS), "secret-secret", mutual=True, reflect=True)
    assert r.failed and r.status == Status.AUTH_FAILURE  # type: ignore


def test_chap_required_cannot_be_skipped() -> None:
    r = machine(CREDS).receive(req(1, 3, True, IDENT))
    assert r.failed and r.status == Status.AUTH_FAILURE
    r = machine(CREDS).receive(req(0, 1, True, {**IDENT, "AuthMethod": "None"}))
    assert r.failed and r.status == Status.AUTH_FAILURE


def test_discovery_session_needs_no_target_name() -> None:
    m = machine()
    r = m.receive(
        req(1, 3, True, {"InitiatorName": "i", "SessionType": "Discovery", "MaxBurstLength": "512"})
    )
    assert r.complete and m.discovery
    assert dict(r.pairs)["MaxBurstLength"] == "Irrelevant"
    assert "TargetPortalGroupTag" not in dict(r.pairs)


def test_continued_text() -> None:
    m = machine()
    body = encode_text(IDENT)
    r = m.receive(LoginRequest(False, True, 1, 3, 0, 0, 1, 0, 0, 1, 0, 0, body[:10]))
    assert not r.transit and not r.pairs
    r = m.receive(LoginRequest(True, False, 1, 3, 0, 0, 1, 0, 0, 1, 0, 0, body[10:]))
    assert r.complete


def test_isid_change_refused() -> None:
    m, _ = machine(CREDS), None
    m.receive(req(0, 1, True, {**IDENT, "AuthMethod": "CHAP"}))
    r = m.receive(req(0, 1, False, {"CHAP_A": "5"}, isid=2))
    assert r.failed and r.status == Status.INITIATOR_ERROR


login_requests = st.builds(
    LoginRequest,
    st.booleans(),
    st.booleans(),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 255),
    st.integers(0, 255),
    st.just(1),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 9),
    st.integers(0, 9),
    st.integers(0, 9),
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(
                [
                    "InitiatorName",
                    "TargetName",
                    "SessionType",
                    "AuthMethod",
                    "CHAP_A",
                    "CHAP_N",
                    "CHAP_R",
                    "CHAP_I",
                    "CHAP_C",
                    "MaxBurstLength",
                    "HeaderDigest",
                    "X-y",
                ]
            ),
            st.sampled_from(
                ["", "None", "CHAP", "5", IQN, "Discovery", "0x00", "0b!!", "99", "alice", "CRC32C"]
            ),
        ).map(encode_text),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(login_requests, max_size=6), st.booleans())
def test_fuzz_login_machine_never_raises(requests: list[LoginRequest], with_chap: bool) -> None:
    m = machine(CREDS if with_chap else None)
    for r in requests:
        reply = m.receive(r)
        assert 0 <= reply.status <= 0x0302
        parse_text(encode_text(reply.pairs))
        if reply.failed:
            assert m.state is LoginState.FAILED
            break


def test_acl_refuses_an_initiator_not_in_it_before_any_authentication() -> None:
    acl = frozenset({"iqn.2025-01.org.ophiura:allowed"})
    m = LoginMachine({IQN: TargetInfo(IQN, 1, None, CREDS, acl)})
    r = m.receive(req(0, 1, True, {**IDENT, "AuthMethod": "CHAP,None"}))
    assert r.failed and r.status == Status.AUTHORIZATION_FAILURE == 0x0202
    assert not any(k.startswith("CHAP_") for k, _ in r.pairs)  # no challenge was issued
    ok = LoginMachine({IQN: TargetInfo(IQN, 1, None, None, acl)})
    r = ok.receive(req(1, 3, True, {**IDENT, "InitiatorName": "iqn.2025-01.org.ophiura:allowed"}))
    assert r.complete and r.status == 0
