"""A background thread that keeps the latest cluster and HE status for the live view.

The story itself asks for what it waits on directly; this is only for showing it. The HE's own
per-SE history (the last 16 state changes) means a recovery that starts and ends between two
polls is still reported afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from ophiura.demo.topology import HIERARCHY, Topology


class Poller:
    def __init__(self, topo: Topology, period: float = 0.3) -> None:
        self.topo = topo
        self.period = period
        self.cluster: dict[str, Any] | None = None
        self.he: dict[str, Any] | None = None
        self.he_node: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo poller", daemon=True)
        self.down: set[str] = set()  # nodes the story crashed (not asked meanwhile)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _ask_cluster(self) -> dict[str, Any] | None:
        for n in self.topo.nodes:
            if n in self.down or n not in self.topo.daemons:
                continue
            with contextlib.suppress(Exception):
                return self.topo.admin(n, {"op": "status"}, timeout=1.0)
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            st = self._ask_cluster()
            self.cluster = st
            owner = st["hierarchies"][HIERARCHY]["owner"] if st else None
            he = None
            if owner and owner not in self.down:
                with contextlib.suppress(Exception):
                    he = self.topo.he_status(owner, timeout=1.0)
            self.he, self.he_node = he, owner if he else None
            self._stop.wait(max(0.05, self.period - (time.monotonic() - t0)))
