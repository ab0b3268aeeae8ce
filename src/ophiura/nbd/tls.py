"""X.509 TLS contexts for NBD, from a certificates directory laid out as libnbd, qemu and nbdkit
expect it, so one directory serves them all:

    DIR/ca-cert.pem       the CA that signs the peers' certificates
    DIR/server-cert.pem   the server's certificate (and chain)   } server side
    DIR/server-key.pem    its private key                        }
    DIR/client-cert.pem   the client's certificate               } client side (optional)
    DIR/client-key.pem    its private key                        }

Only the file names ever reach a message or a log line, never a key's content. TLS 1.2 is the
floor (the NBD spec: MUST support 1.2, SHOULD NOT offer older versions by default).
"""

from __future__ import annotations

import ssl
from pathlib import Path

CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"


class TlsConfigError(ValueError):
    """The certificates directory is missing a file or holds one that does not load."""


def _file(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise TlsConfigError(f"TLS certificates: {path} is missing")
    return path


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        # The ssl module's message names no key material; say which files, not what is in them.
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise TlsConfigError(f"TLS certificates: {cert} / {key} do not load: {reason}") from None


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise TlsConfigError(f"TLS certificates: {ca} does not load: {reason}") from None


def server_context(directory: Path, *, verify_peer: bool = False) -> ssl.SSLContext:
    """The server's context: its certificate, and the CA that client certificates must chain to.

    A client that presents a certificate is always verified against ca-cert.pem (a certificate
    from another CA fails the handshake); `verify_peer` also refuses a client that presents none.
    Without ca-cert.pem, client certificates are not asked for (and `verify_peer` is an error).
    """
    if not directory.is_dir():
        raise TlsConfigError(f"TLS certificates: {directory} is not a directory")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, _file(directory, SERVER_CERT), _file(directory, SERVER_KEY))
    ca = directory / CA_CERT
    if ca.is_file():
        _load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if verify_peer else ssl.CERT_OPTIONAL
    elif verify_peer:
        raise TlsConfigError(f"TLS certificates: {ca} is missing (needed to verify clients)")
    return ctx


def client_context(directory: Path | None = None, *, verify_server: bool = True) -> ssl.SSLContext:
    """A client's context: trust ca-cert.pem (else the system's CAs), present client-cert.pem
    when the directory has one. `verify_server=False` skips the server's certificate check
    (tests of the server's own refusals only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify_server:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if directory is None:
        if verify_server:
            ctx.load_default_certs()
        return ctx
    if not directory.is_dir():
        raise TlsConfigError(f"TLS certificates: {directory} is not a directory")
    ca = directory / CA_CERT
    if verify_server:
        if ca.is_file():
            _load_ca(ctx, ca)
        else:
            ctx.load_default_certs()
    cert = directory / CLIENT_CERT
    if cert.is_file():
        _load_chain(ctx, cert, _file(directory, CLIENT_KEY))
    return ctx
