"""systemd's notification protocol (sd_notify(3)), written directly: one datagram per message.

`Type=notify` units wait for `READY=1` before they count as started, and `WatchdogSec=` restarts
a service that stops sending `WATCHDOG=1`. The protocol is a newline-separated `KEY=VALUE`
datagram on the AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace); `$WATCHDOG_USEC` (and `$WATCHDOG_PID`, if set, must be our PID) enables the
watchdog. No libsystemd binding is needed for a sendto().

Like sd_notify's unset_environment, `from_environ()` removes these variables from the
environment, so the processes the daemon starts (agents, services) do not inherit them and
cannot speak for it. Outside systemd every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, MutableMapping

log = logging.getLogger(__name__)

VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes:
    """`$NOTIFY_SOCKET` as an address for sendto(): '@name' is the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if not value.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET={value!r} is neither an absolute path nor @abstract")
    return value


class Notifier:
    def __init__(
        self,
        address: str | bytes | None,
        watchdog_usec: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if address is not None else 0
        self.clock = clock
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._loop_seen = clock()
        self._last_ping = -1e18
        self._failed_once = False
        self.sent = 0

    @classmethod
    def from_environ(
        cls,
        environ: MutableMapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Notifier:
        env = os.environ if environ is None else environ
        values = {k: env.pop(k, None) for k in VARIABLES}
        raw = values["NOTIFY_SOCKET"]
        if not raw:
            return cls(None, clock=clock)
        try:
            address = socket_address(raw)
        except ValueError as exc:
            log.warning("sd_notify disabled: %s", exc)
            return cls(None, clock=clock)
        usec = 0
        pid = values["WATCHDOG_PID"]
        if values["WATCHDOG_USEC"] and (not pid or pid == str(os.getpid())):
            try:
                usec = int(values["WATCHDOG_USEC"] or 0)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number", values["WATCHDOG_USEC"])
        return cls(address, max(0, usec), clock)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send `KEY=VALUE` lines (READY="1", STATUS="...", ...); False if not sent."""
        if self.address is None:
            return False
        data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(data, self.address)
            except OSError as exc:
                if not self._failed_once:  # systemd gone or the socket wrong: say it once
                    self._failed_once = True
                    log.warning("sd_notify to %r failed: %s", self.address, exc)
                return False
            self.sent += 1
            return True

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.notify(STOPPING="1", STATUS=status)

    def loop_alive(self) -> None:
        """The main loop cycled: pings are sent only while it does (see watchdog())."""
        self._loop_seen = self.clock()

    def watchdog(self) -> bool:
        """Called from the heartbeat thread every interval: WATCHDOG=1 at most every quarter
        period, and only while the decision loop cycled within half of it (a hung main loop
        with a live heartbeat thread must still get the service restarted)."""
        if not self.watchdog_usec:
            return False
        period = self.watchdog_usec / 1e6
        now = self.clock()
        if now - self._loop_seen > period / 2 or now - self._last_ping < period / 4:
            return False
        self._last_ping = now
        return self.notify(WATCHDOG="1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
