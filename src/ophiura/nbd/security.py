"""Who may use an NBD listener: the TLS mode, an allow-list of client addresses, a connection cap.

`NbdSecurity` is pure policy, decided from a snapshot: `refusal(peer, open_connections)` says
why a new connection must be closed at once (or None), `exposure_warning(host)` says whether the
listener is open to a network without any authentication. The server (server.py) acts on the
answers; `tls.py` builds the TLS contexts. The same options feed `ophiura target` and `ophiura he`
through `from_options`, so both refuse bad values with the same one-line messages.

TLS modes (the NBD spec's names in brackets):
  off      no TLS (NOTLS): NBD_OPT_STARTTLS is refused ERR_UNSUP
  on       offered, optional (SELECTIVETLS with no TLS-only export)
  require  every option but STARTTLS and ABORT is refused ERR_TLS_REQD until TLS is up, and
           NBD_OPT_EXPORT_NAME before TLS closes the connection (FORCEDTLS)
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ophiura.nbd.protocol import TlsMode
from ophiura.nbd.tls import server_context

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "IPNetwork",
    "NbdListen",
    "NbdSecurity",
    "NbdSecurityError",
    "TlsMode",
    "parse_cidr",
]


class NbdSecurityError(ValueError):
    """An NBD security option is malformed or inconsistent (one line, names the option)."""


def parse_cidr(text: str) -> IPNetwork:
    """An address or network: 10.0.0.0/8, 192.0.2.7 (one host), fd00::/8."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise NbdSecurityError(
            f"--nbd-allow: {text!r} is not an address or a CIDR (e.g. 10.0.0.0/8)"
        ) from None


def _peer_address(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of an asyncio peername ((host, port) or (host, port, flow, scope)); an
    IPv4-mapped IPv6 address counts as the IPv4 address it carries."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        addr = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches this host only (names other than localhost: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class NbdSecurity:
    """The access policy of one NBD listener; the default is the old behaviour (open, no TLS)."""

    tls: TlsMode = TlsMode.OFF
    certificates: Path | None = None
    verify_peer: bool = False  # refuse a TLS client without a certificate from our CA
    allow: tuple[IPNetwork, ...] = ()  # empty: any address
    max_connections: int | None = None  # None: no cap

    def __post_init__(self) -> None:
        if self.tls is not TlsMode.OFF and self.certificates is None:
            raise NbdSecurityError(f"--tls {self.tls}: give --tls-certificates DIR")
        if self.verify_peer and self.tls is TlsMode.OFF:
            raise NbdSecurityError("--tls-verify-peer needs TLS (--tls-certificates DIR)")
        if self.max_connections is not None and self.max_connections < 1:
            raise NbdSecurityError(
                f"--nbd-max-connections: {self.max_connections} must be at least 1"
            )

    @classmethod
    def from_options(
        cls,
        *,
        tls: str | None = None,
        certificates: str | Path | None = None,
        verify_peer: bool = False,
        allow: Iterable[str] = (),
        max_connections: int | str | None = None,
    ) -> NbdSecurity:
        """From option values as typed. TLS defaults to `require` when certificates are
        given (a certificate is configured to be used, not merely offered), else `off`."""
        if tls is None:
            mode = TlsMode.REQUIRE if certificates is not None else TlsMode.OFF
        else:
            try:
                mode = TlsMode(str(tls).lower())
            except ValueError:
                raise NbdSecurityError(f"--tls: {tls!r} is not off, on or require") from None
        cap: int | None = None
        if max_connections is not None:
            try:
                cap = int(max_connections)
            except (TypeError, ValueError):
                raise NbdSecurityError(
                    f"--nbd-max-connections: {max_connections!r} is not an integer"
                ) from None
        return cls(
            tls=mode,
            certificates=Path(certificates) if certificates is not None else None,
            verify_peer=verify_peer,
            allow=tuple(parse_cidr(a) for a in allow),
            max_connections=cap,
        )

    @property
    def authenticated(self) -> bool:
        """Whether a stranger who reaches the port is kept out: an allow-list, or TLS that
        every client must use with a certificate from our CA."""
        return bool(self.allow) or (self.tls is TlsMode.REQUIRE and self.verify_peer)

    def server_context(self) -> ssl.SSLContext | None:
        """The TLS context the listener hands to `loop.start_tls` (None: TLS off)."""
        if self.tls is TlsMode.OFF or self.certificates is None:
            return None
        return server_context(self.certificates, verify_peer=self.verify_peer)

    def refusal(self, peer: object, open_connections: int) -> str | None:
        """Why a new connection from `peer` must be closed now, or None to serve it;
        `open_connections` are the ones already being served (not counting this one)."""
        if self.allow:
            addr = _peer_address(peer)
            if addr is None or not any(addr in net for net in self.allow):
                return "address not in the allow-list"
        if self.max_connections is not None and open_connections >= self.max_connections:
            return f"connection limit ({self.max_connections}) reached"
        return None

    def exposure_warning(self, host: str) -> str | None:
        """A warning when `host` is not loopback and nothing authenticates a client."""
        if is_loopback(host) or self.authenticated:
            return None
        return (
            f"NBD listener on {host} accepts any client that reaches it: no TLS client "
            "verification (--tls require --tls-verify-peer) and no --nbd-allow list"
        )

    def describe(self) -> str:
        """For the start-up log line (the directory is named, never a key's content)."""
        parts = [f"tls={self.tls}"]
        if self.tls is not TlsMode.OFF:
            parts.append(f"certificates={self.certificates}")
            parts.append("client cert required" if self.verify_peer else "client cert optional")
        if self.allow:
            parts.append("allow=" + ",".join(str(n) for n in self.allow))
        if self.max_connections is not None:
            parts.append(f"max-connections={self.max_connections}")
        return " ".join(parts)


@dataclass(frozen=True)
class NbdListen:
    """Where an NBD server listens and who may use it (frontends.py, the HE's config)."""

    host: str
    port: int
    security: NbdSecurity = field(default_factory=NbdSecurity)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port
