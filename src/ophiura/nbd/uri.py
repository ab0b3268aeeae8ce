"""NBD URIs as libnbd spells them (the subset ophiura's tools need), so one string names an
export for nbdinfo, qemu and `NbdClient.connect_uri` alike:

    nbd://HOST[:PORT][/EXPORT]                          plaintext
    nbds://HOST[:PORT][/EXPORT][?tls-certificates=DIR]  TLS required (STARTTLS, X.509)

The port defaults to 10809 and the export to "" (the server's default). IPv6 hosts go in
brackets (nbd://[::1]:10809/disk). Unix sockets, TLS-PSK and other query keys are refused with
a one-line error rather than ignored: a URI that asked for something we would not do must not
silently connect without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ophiura.nbd.constants import DEFAULT_PORT


class NbdUriError(ValueError):
    """Not an nbd:// or nbds:// URI we can follow (the message says what is wrong)."""


@dataclass(frozen=True)
class NbdUri:
    host: str
    port: int = DEFAULT_PORT
    export: str = ""
    tls: bool = False
    certificates: Path | None = None  # tls-certificates=DIR (client-cert.pem, ca-cert.pem)


def parse_nbd_uri(text: str) -> NbdUri:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise NbdUriError(f"{text!r}: {exc}") from None
    if parts.scheme not in ("nbd", "nbds"):
        raise NbdUriError(f"{text!r}: not nbd:// or nbds:// (unix sockets are not supported)")
    if not parts.hostname:
        raise NbdUriError(f"{text!r}: no host")
    if parts.username or parts.password:
        raise NbdUriError(f"{text!r}: user names and TLS-PSK are not supported (use X.509)")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"tls-certificates"}
    if unknown:
        raise NbdUriError(f"{text!r}: unsupported query {', '.join(sorted(unknown))}")
    certs = query.get("tls-certificates", [])
    if len(certs) > 1 or (certs and not certs[0]):
        raise NbdUriError(f"{text!r}: give tls-certificates=DIR once")
    tls = parts.scheme == "nbds"
    if certs and not tls:
        raise NbdUriError(f"{text!r}: tls-certificates needs nbds://")
    return NbdUri(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORT,
        export=unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path),
        tls=tls,
        certificates=Path(certs[0]) if certs else None,
    )
