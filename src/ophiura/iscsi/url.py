"""libiscsi-style iSCSI URLs: `iscsi://[user[%password]@]host[:port]/target-iqn/lun`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_PASSWORD = re.compile(r"^(iscsi://[^/@]*?%)[^/@]*@")


def redact(url: str) -> str:
    """The URL with its password (`user%password@`) replaced by `***`: for logs and messages."""
    return _PASSWORD.sub(r"\1***@", url)


@dataclass(frozen=True)
class IscsiUrl:
    host: str
    port: int
    target: str
    lun: int
    user: str | None = None
    password: str | None = None


def parse_url(url: str) -> IscsiUrl:
    """`iscsi://[user[%password]@]host[:port]/target-iqn/lun` (libiscsi's syntax)."""
    if not url.startswith("iscsi://"):
        raise ValueError(f"not an iscsi:// URL: {redact(url)}")
    rest = url[len("iscsi://") :]
    user = password = None
    if "@" in rest.split("/", 1)[0]:
        cred, rest = rest.split("@", 1)
        user, _, pw = cred.partition("%")
        user, password = unquote(user), (unquote(pw) if pw else None)
    hostport, _, path = rest.partition("/")
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port = int(tail[1:]) if tail.startswith(":") else 3260
    elif ":" in hostport:
        host, p = hostport.rsplit(":", 1)
        port = int(p)
    else:
        host, port = hostport, 3260
    target, _, lun = path.partition("/")
    if not host or not target:
        raise ValueError(f"URL needs host and target: {redact(url)}")
    return IscsiUrl(host, port, target, int(lun) if lun else 0, user or None, password)


__all__ = ["IscsiUrl", "parse_url", "redact"]
