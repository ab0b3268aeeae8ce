"""Logging for the `ophiura` command: plain lines on a terminal, syslog priorities for journald.

Under systemd, stderr goes to the journal, which stamps every entry itself and reads a leading
`<N>` as the entry's syslog priority (SyslogLevelPrefix=, on by default). So when stderr *is* the
journal's stream (`$JOURNAL_STREAM` names its device:inode, as systemd.exec(5) says to check),
each line is `<6>ophiura.cluster.daemon: ...`: no timestamp of our own, and `journalctl -p
warning` shows warnings and worse. Every line of a multi-line message (a traceback) carries the
prefix, because journald splits the stream into one entry per line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

# syslog(3) priorities
PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def priority(levelno: int) -> int:
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True if `stream` is the one systemd connected to the journal ($JOURNAL_STREAM=dev:ino)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def configure(level: int, stream: TextIO | None = None) -> logging.Handler:
    """One handler on the root logger, formatted for the journal or for a terminal."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if is_journal(out) else logging.Formatter(PLAIN))
    handler.set_name("ophiura")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ophiura"]:
        root.removeHandler(old)  # configured again in one process (tests): replace, not add
    root.addHandler(handler)
    root.setLevel(level)
    return handler
