"""CHAP for iSCSI (RFC 1994, RFC 7143 §12.1.3): MD5 over identifier, secret and challenge.

Binary values travel as `0x<hex>` or `0b<base64>`; we send hex, accept both. The target keeps
the challenges it issued so that an initiator cannot answer a challenge with itself (a mutual
CHAP challenge equal to ours would let a man in the middle reflect our own response).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

CHAP_MD5 = 5
CHALLENGE_LEN = 16
MAX_CHALLENGE_LEN = 1024


class ChapError(Exception):
    """A CHAP value that cannot be decoded or is out of range."""


@dataclass(frozen=True)
class Credentials:
    """A target's CHAP settings: what the initiator must prove, and optionally what we prove."""

    user: str
    secret: str = field(repr=False)  # (a repr lands in logs and tracebacks)
    mutual_user: str | None = None
    mutual_secret: str | None = field(default=None, repr=False)


def chap_response(identifier: int, secret: bytes | str, challenge: bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    return hashlib.md5(bytes([identifier & 0xFF]) + secret + challenge).digest()


def decode_binary(value: str) -> bytes:
    """`0x...` hex or `0b...` base64 (RFC 7143 §6.1 binary-value)."""
    try:
        if value[:2] in ("0x", "0X"):
            digits = value[2:]
            if len(digits) % 2:
                digits = "0" + digits
            return binascii.unhexlify(digits)
        if value[:2] in ("0b", "0B"):
            return base64.b64decode(value[2:], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ChapError(f"bad binary value: {exc}") from None
    raise ChapError(f"binary value without 0x/0b prefix: {value[:20]!r}")


def encode_hex(value: bytes) -> str:
    return "0x" + value.hex()


def new_challenge() -> tuple[int, bytes]:
    return secrets.randbelow(256), secrets.token_bytes(CHALLENGE_LEN)


def verify(identifier: int, secret: str, challenge: bytes, response: bytes) -> bool:
    return hmac.compare_digest(chap_response(identifier, secret, challenge), response)
