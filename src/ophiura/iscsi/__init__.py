"""RFC 7143 iSCSI: target transport (`IscsiServer`) and a small initiator (`IscsiInitiator`)."""

from ophiura.iscsi.chap import Credentials
from ophiura.iscsi.initiator import IscsiInitiator, ScsiResult
from ophiura.iscsi.server import IscsiServer
from ophiura.iscsi.text import TargetPolicy
from ophiura.iscsi.url import IscsiUrl, parse_url

__all__ = [
    "Credentials",
    "IscsiInitiator",
    "IscsiServer",
    "IscsiUrl",
    "ScsiResult",
    "TargetPolicy",
    "parse_url",
]
