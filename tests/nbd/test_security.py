"""NbdSecurity as pure policy: option parsing, the allow-list and the cap decided from a
snapshot, the exposure warning, and what its log description shows (never a key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ophiura.nbd.security import NbdSecurity, NbdSecurityError, TlsMode, is_loopback
from ophiura.testkit.netns import NsLoop, add_address, namespace, unavailable, veth


def test_defaults_are_open_and_plain() -> None:
    sec = NbdSecurity()
    assert sec.tls is TlsMode.OFF and sec.server_context() is None
    assert sec.refusal(("203.0.113.9", 5000), 10_000) is None


def test_certificates_default_to_require(tmp_path: Path) -> None:
    assert NbdSecurity.from_options(certificates=tmp_path).tls is TlsMode.REQUIRE
    assert NbdSecurity.from_options(certificates=tmp_path, tls="on").tls is TlsMode.ON
    assert NbdSecurity.from_options().tls is TlsMode.OFF


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tls": "require"}, "--tls require: give --tls-certificates"),
        ({"tls": "maybe", "certificates": "/x"}, "--tls: 'maybe' is not off, on or require"),
        ({"verify_peer": True}, "--tls-verify-peer needs TLS"),
        ({"allow": ["10.0.0.0/33"]}, "--nbd-allow: '10.0.0.0/33' is not"),
        ({"allow": ["example.org"]}, "--nbd-allow: 'example.org' is not"),
        ({"max_connections": 0}, "--nbd-max-connections: 0 must be at least 1"),
        ({"max_connections": "many"}, "--nbd-max-connections: 'many' is not an integer"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(NbdSecurityError) as err:
        NbdSecurity.from_options(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value) and "\n" not in str(err.value)


def test_allow_list_decides_by_address() -> None:
    sec = NbdSecurity.from_options(allow=["10.0.0.0/8", "198.51.100.7", "fd00::/8"])
    assert sec.refusal(("10.1.2.3", 4000), 0) is None
    assert sec.refusal(("198.51.100.7", 4000), 0) is None
    assert sec.refusal(("fd00::1", 4000, 0, 0), 0) is None
    assert sec.refusal(("::ffff:10.9.9.9", 4000, 0, 0), 0) is None  # IPv4-mapped counts as IPv4
    assert sec.refusal(("127.0.0.1", 4000), 0) == "address not in the allow-list"
    assert sec.refusal(("198.51.100.8", 4000), 0) == "address not in the allow-list"
    assert sec.refusal(None, 0) == "address not in the allow-list"  # unknown peer: refused


def test_cap_counts_the_connections_already_served() -> None:
    sec = NbdSecurity.from_options(max_connections=2)
    assert sec.refusal(("127.0.0.1", 1), 0) is None
    assert sec.refusal(("127.0.0.1", 1), 1) is None
    assert sec.refusal(("127.0.0.1", 1), 2) == "connection limit (2) reached"


def test_exposure_warning_only_beyond_loopback_without_authentication(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("198.51.100.1")
    open_ = NbdSecurity()
    assert open_.exposure_warning("127.0.0.1") is None
    warning = open_.exposure_warning("0.0.0.0")
    assert warning is not None and "0.0.0.0" in warning and "any client" in warning
    # TLS alone is not authentication: anyone may connect without a certificate
    assert NbdSecurity.from_options(certificates=tmp_path).exposure_warning("0.0.0.0")
    assert NbdSecurity.from_options(certificates=tmp_path, tls="on", verify_peer=True)
    assert NbdSecurity.from_options(
        certificates=tmp_path, tls="on", verify_peer=True
    ).exposure_warning("0.0.0.0")  # "on" lets plaintext clients in
    assert (
        NbdSecurity.from_options(certificates=tmp_path, verify_peer=True).exposure_warning(
            "0.0.0.0"
        )
        is None
    )
    assert NbdSecurity.from_options(allow=["10.0.0.0/8"]).exposure_warning("0.0.0.0") is None


def test_describe_names_the_directory_not_the_key(tmp_path: Path) -> None:
    text = NbdSecurity.from_options(
        certificates=tmp_path, verify_peer=True, allow=["10.0.0.0/8"], max_connections=4
    ).describe()
    assert text == (
        f"tls=require certificates={tmp_path} client cert required allow=10.0.0.0/8 "
        "max-connections=4"
    )


@pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))
@pytest.mark.parametrize("guarded", [False, True])
def test_frontends_report_the_warning_of_a_listener_beyond_loopback(guarded: bool) -> None:
    """In a namespace of our own, on 198.51.100.1 (the same through `ophiura target`:
    test_tls_real_clients.py)."""
    from ophiura.frontends import Frontends, NbdListen

    security = NbdSecurity.from_options(allow=["198.51.100.0/24"] if guarded else [])
    with namespace("nbdfe") as ns:
        veth(ns, "v0", "v1")
        add_address(ns, "v0", "198.51.100.1/24")
        loop = NsLoop(ns, "nbd frontends")
        fe = Frontends(None, NbdListen("198.51.100.1", 0, security))
        try:
            loop.run(fe.start())
            warnings = fe.warnings()
        finally:
            loop.run(fe.stop())
            loop.close()
    if guarded:
        assert warnings == []
    else:
        assert len(warnings) == 1 and "NBD listener on 198.51.100.1" in warnings[0]
    assert fe.warnings() == []  # stopped
