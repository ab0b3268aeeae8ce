"""How the story is shown: a rich live view (tables, recovery progress bars) or plain lines.

Both narrators take the same calls (`step`, `say`), so the headless run the tests drive tells
exactly the story a person watches.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ophiura.demo.client import RecordClient
from ophiura.demo.poller import Poller
from ophiura.demo.topology import HIERARCHY, VOLUME, Topology


class PlainNarrator:
    """Timestamped lines on stdout (headless runs, CI, a pipe)."""

    def __init__(self, stream: Any = None) -> None:
        self.t0 = time.monotonic()
        self.stream = stream or sys.stdout

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def step(self, title: str) -> None:
        self._line(f"== {title}")

    def say(self, text: str, style: str = "") -> None:
        self._line(f"   {text}")

    def _line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.stream, flush=True)


class LiveView(PlainNarrator):
    """A full-screen-ish live panel refreshed 4 times a second from the poller's snapshots."""

    def __init__(self, topo: Topology, poller: Poller, console: Console | None = None) -> None:
        super().__init__()
        self.topo = topo
        self.poller = poller
        self.client: RecordClient | None = None
        self.console = console or Console()
        self.title = "starting"
        self.lines: deque[Text] = deque(maxlen=12)
        self.live = Live(console=self.console, refresh_per_second=4, get_renderable=self.render)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()

    def step(self, title: str) -> None:
        self.title = title
        self.lines.append(Text(f"{time.monotonic() - self.t0:6.1f}s  {title}", style="bold cyan"))

    def say(self, text: str, style: str = "") -> None:
        self.lines.append(Text(f"{time.monotonic() - self.t0:6.1f}s    {text}", style=style))

    # ------------------------------------------------------------------ rendering

    def render(self) -> Any:
        head = Text.assemble(
            ("ophiura demo", "bold"),
            f"  {self.topo.mode}  ",
            (self.title, "cyan"),
            f"  t+{time.monotonic() - self.t0:.1f}s",
        )
        return Panel(
            Group(self._nodes(), self._storage(), self._client(), Text(""), *self.lines),
            title=head,
            border_style="blue",
        )

    def _nodes(self) -> Table:
        st = self.poller.cluster
        t = Table(title="cluster nodes", expand=True, title_justify="left")
        for col in ("node", "daemon", "seen as", f"hierarchy {HIERARCHY}", "resources"):
            t.add_column(col)
        h = st["hierarchies"][HIERARCHY] if st else None
        for n in self.topo.nodes:
            sp = self.topo.daemons.get(n)
            alive = sp is not None and sp.alive() and n not in self.poller.down
            daemon = Text("running", "green") if alive else Text("down", "red")
            seen = "?" if st is None else st["nodes"].get(n, {}).get("state", "?")
            if seen == "self":
                seen = st["state"]
            hs = "" if h is None else h["states"].get(n, "")
            style = "bold green" if h and h["owner"] == n else ""
            hs_text = Text(f"{hs}{'  (owner, gen ' + str(h['gen']) + ')' if style else ''}", style)
            res = (
                ""
                if h is None
                else " ".join(f"{r}:{s}" for r, s in (h["resources"].get(n) or {}).items())
            )
            t.add_row(n, daemon, str(seen), hs_text, res)
        return t

    def _storage(self) -> Table:
        he = self.poller.he
        vol = next((v for v in (he or {}).get("volumes", []) if v["name"] == VOLUME), None)
        title = "storage elements"
        if vol is not None:
            title += (
                f" (HE on {self.poller.he_node}: epoch {vol['epoch']}, "
                f"seq {vol['acked_seq']}, quorum {vol['quorum']} of {len(vol['ses'])})"
            )
        t = Table(title=title, expand=True, title_justify="left")
        for col in ("SE", "process", "replica state", "acked seq", "recovery"):
            t.add_column(col)
        reps = {r["name"]: r for r in (vol or {}).get("ses", [])}
        for s in self.topo.ses:
            sp = self.topo.se_procs.get(s)
            proc = Text("running", "green") if sp and sp.alive() else Text("killed", "red")
            r = reps.get(s)
            if r is None:
                t.add_row(s, proc, "-", "-", "")
                continue
            state = r["state"]
            style = "green" if state == "up" else "yellow" if "recover" in state else "red"
            rec: Any = ", ".join(f"{k} x{v}" for k, v in r["recoveries"].items())
            done, total = r["progress"]
            if state.startswith("recovering") and total:
                rec = ProgressBar(total=max(1, total), completed=min(done, total), width=30)
            t.add_row(s, proc, Text(state, style), str(r["acked_seq"]), rec)
        return t

    def _client(self) -> Text:
        c = self.client
        if c is None and self.topo.service == "postgres":
            return Text(
                "clients: the ledger client and pgbench, in the client namespace, against "
                "PostgreSQL on the floating IP (their results in the report)"
            )
        if c is None:
            return Text("client: not started")
        acks = c.ledger.acked
        now = time.monotonic()
        recent = sum(1 for a in acks[-400:] if now - a.done < 1.0)
        since = now - acks[-1].done if acks else None
        gap = Text(f"{since:.2f}s since last ack", "red" if since and since > 0.5 else "green")
        return Text.assemble(
            "client: ",
            (f"{len(acks)} acknowledged", "bold"),
            f", {len(c.ledger.failures)} failed requests, {recent}/s, answered by ",
            (str(c.last_node), "bold"),
            ", ",
            gap if since is not None else "",
        )
