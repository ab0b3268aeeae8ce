"""Self-fence backing: the Linux watchdog device (`[cluster] watchdog = "/dev/watchdog"`).

A node that must self-fence (its reservation was preempted, its epoch is stale, it lost quorum)
stops its resources; if that stop hangs (a process in D state, an unmount that never returns), it
would keep running with data it no longer owns. The watchdog is the backstop, as in sbd: while
the node is healthy the heartbeat thread kicks the device every interval (its own thread, so no
resource work can starve it; it stops if the decision loop has not cycled for timeout/2, a
hang that would otherwise go unnoticed while heartbeats flow); from the moment a self-fence
begins it stops kicking, and kicks again only once every self-fencing stop has completed. A
stop that hangs or fails past `watchdog_timeout` seconds gets the machine reset by the hardware
(or the kernel's softdog).

A clean shutdown writes the magic character 'V' before closing, which disarms the device (unless
the kernel was built with nowayout); a shutdown while a self-fence is pending does not.
The timeout is set with WDIOC_SETTIMEOUT on a character device; any other path (a FIFO in
tests) just receives the bytes: one b"\\0" per kick and b"V" on a clean close.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import stat
import struct
import threading
import time

log = logging.getLogger(__name__)

WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int), linux/watchdog.h
KICK = b"\0"  # any byte but 'V' is a keepalive
MAGIC_CLOSE = b"V"


class WatchdogError(OSError):
    """The device cannot be opened or configured; the message names it."""


class Watchdog:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd = -1
        self._lock = threading.Lock()
        self._holds: set[str] = set()
        self._failed = False  # a write failed: logged once, kicking stops (the device resets)
        self._loop_seen = time.monotonic()  # the decision loop's last cycle
        self.kicks = 0

    def open(self) -> int | None:
        """Open and arm; the device's timeout in seconds (None for a non-device path)."""
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise WatchdogError(exc.errno, f"watchdog {self.path}: {exc.strerror}") from exc
        if not stat.S_ISCHR(os.fstat(self._fd).st_mode):
            return None
        want = max(1, math.ceil(self.timeout))
        try:
            got = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", want))
        except OSError as exc:
            log.warning("watchdog %s: cannot set timeout %d s: %s", self.path, want, exc)
            return None
        return int(struct.unpack("i", got)[0])

    @property
    def held(self) -> bool:
        with self._lock:
            return bool(self._holds)

    def hold(self, why: str) -> bool:
        """Stop kicking until every hold is released; True if this is a new hold."""
        with self._lock:
            new = why not in self._holds
            self._holds.add(why)
            return new

    def release(self, why: str) -> bool:
        with self._lock:
            had = why in self._holds
            self._holds.discard(why)
            return had

    def loop_alive(self) -> None:
        """The decision loop cycled. Kicks need one within timeout/2: a loop hung for that long
        (a deadlock, not resource work, which runs off it) gets the node reset too."""
        self._loop_seen = time.monotonic()

    def kick(self) -> None:
        """Called by the heartbeat thread every interval."""
        with self._lock:
            if self._fd < 0 or self._holds or self._failed:
                return
            if time.monotonic() - self._loop_seen > self.timeout / 2:
                return
            try:
                os.write(self._fd, KICK)
                self.kicks += 1
            except OSError as exc:
                self._failed = True
                log.error("watchdog %s: kick failed, no more kicks: %s", self.path, exc)

    def close(self) -> bool:
        """Close; disarm with the magic 'V' unless a self-fence is pending. True if disarmed."""
        with self._lock:
            if self._fd < 0:
                return False
            clean = not self._holds and not self._failed
            try:
                if clean:
                    os.write(self._fd, MAGIC_CLOSE)
            except OSError as exc:
                clean = False
                log.error("watchdog %s: magic close failed: %s", self.path, exc)
            finally:
                os.close(self._fd)
                self._fd = -1
            return clean
