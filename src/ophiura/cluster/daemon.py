"""`ophiura node`: one cluster node. Each cycle: snapshot -> decide() -> act.

The cycle runs every half heartbeat interval on the main asyncio loop and does no I/O of its own:
heartbeats live on their own thread (heartbeat_io), agents run as executor tasks, the event log
and notifications on their own threads. So a cycle is a few hundred microseconds of pure work, and
the worst a slow agent can do is make its own hierarchy wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import replace
from typing import Any

from ophiura.cluster import clock, fencing, membership
from ophiura.cluster import decide as decider
from ophiura.cluster import reload as reloader
from ophiura.cluster.admin import AdminError, AdminServer
from ophiura.cluster.config import ClusterConfig, ConfigError, load
from ophiura.cluster.events import EventLog, Notifications
from ophiura.cluster.executor import Executor
from ophiura.cluster.heartbeat import CODE_RESOURCES, RESOURCE_CODES, HierReport
from ophiura.cluster.heartbeat_io import HeartbeatService
from ophiura.cluster.model import (
    Action,
    AdminState,
    Blocked,
    ClearSwitchover,
    ClusterView,
    FenceNode,
    KeepRunning,
    NodeEvent,
    PeerView,
    StartHierarchy,
    StopHierarchy,
)
from ophiura.cluster.node_metrics import NodeMetrics
from ophiura.cluster.state import (
    ACTIVE,
    HOLDING,
    HierarchyState,
    NodeState,
    PeerState,
    transition,
)
from ophiura.cluster.watchdog import Watchdog, WatchdogError
from ophiura.sdnotify import Notifier
from ophiura.web import hook as web_hook

log = logging.getLogger(__name__)


class NodeDaemon:
    def __init__(self, cfg: ClusterConfig, me: str, keep_resources: bool = False) -> None:
        if me not in cfg.nodes:
            raise ValueError(
                f"node {me!r} is not in the cluster configuration ({', '.join(cfg.nodes)})"
            )
        self.cfg = cfg
        self.me = me
        self.state = NodeState.STARTING
        # SIGTERM leaves every hierarchy running for the restarted daemon to adopt (upgrades).
        self.keep_resources = keep_resources or not cfg.stop_on_shutdown
        self._admin_file = cfg.state_path(me) / "admin.json"
        self.admin = self._load_admin()
        self.fenced: set[str] = set()
        self.fencing: set[str] = set()
        self.blocked: dict[str, str] = {}
        self.tie_breaker: bool | None = None if cfg.tie_breaker else False
        self.mem: membership.Membership | None = None
        self.view: ClusterView | None = None
        state_dir = cfg.state_path(me)
        self.events = EventLog(state_dir / "events", me)
        self.notify = Notifications(cfg.notifiers, cfg.name)
        self.watchdog = (
            Watchdog(cfg.watchdog_path(me), cfg.watchdog_timeout) if cfg.watchdog else None
        )
        self._self_fencing: set[str] = set()  # hierarchies whose self-fence stop is pending
        self.sd = Notifier.from_environ()  # systemd: READY=1, WATCHDOG=1 (sdnotify.py)
        self.hb = HeartbeatService(cfg, me, on_event=self._from_thread, on_tick=self._hb_tick)
        self.metrics = NodeMetrics(self)  # /metrics (node_metrics.py)
        self.executor = Executor(
            cfg, me, self.emit, generations=cfg.state_path(me) / "generations.json"
        )
        self.admin_server = AdminServer(cfg.key("admin"), me, self.handle)
        self.web: web_hook.Stoppable | None = None  # REST API + dashboard, if cluster/node http
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._started = 0.0
        self._last_cycle = 0.0
        self._next_expiry: float | None = None  # when the next up link would go down
        self._tasks: set[asyncio.Task[Any]] = set()
        self._probed = False
        self._cleanups_done: dict[str, int] = {}
        self._reload_lock = asyncio.Lock()
        self._config_seen: dict[str, str] = {}  # peer -> the digest we last saw it announce
        self._tie_task: asyncio.Task[None] | None = None
        self._tie_checked = -1e18
        # Back online after standby or lost quorum: start nothing until then (see apply()).
        self._hold_until = 0.0

    # -- events -------------------------------------------------------------------------------

    def emit(self, kind: str, **fields: Any) -> None:
        event = {"time": round(time.time(), 3), "node": self.me, "kind": kind, **fields}
        event = {k: (str(v) if hasattr(v, "value") else v) for k, v in event.items()}
        log.info(
            "%s", " ".join(f"{k}={v}" for k, v in event.items() if k not in ("time", "output"))
        )
        self.events.record(event)
        self.notify.submit(event)
        self.metrics.observe(event)

    def _from_thread(self, event: dict[str, Any]) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(lambda: self.emit(**event))

    def _hb_tick(self) -> None:
        """On the heartbeat thread after each send: kick the watchdog device and systemd's."""
        if self.watchdog is not None:
            self.watchdog.kick()
        self.sd.watchdog()

    # -- the cycle ----------------------------------------------------------------------------

    def build_view(self, now: float) -> ClusterView:
        t = self.cfg.timings
        snap = self.hb.snapshot()
        peers = [n for n in self.cfg.nodes if n != self.me]
        mem = membership.evaluate(
            snap.last_heard,
            peers,
            [ln.name for ln in self.cfg.links],
            now,
            t.deadline,
            snap.resumed_at,
        )
        for ev in membership.changes(self.mem, mem):
            if ev.kind == "node-up":
                self.fenced.discard(ev.node)
            desc = {
                "node-dead": "every link silent past the deadline",
                "link-down": "one link lost: not a failover while another link is up",
            }.get(ev.kind, "")
            kind = "node" if ev.kind.startswith("node") else "link"
            self.emit(kind, peer=ev.node, link=ev.link, task=ev.kind, desc=desc)
        self.mem = mem
        self._next_expiry = membership.next_expiry(
            snap.last_heard, now, t.deadline, snap.resumed_at
        )
        pviews = {}
        for p in peers:
            rep = snap.reports.get(p)
            if rep is not None and rep.admin:
                try:
                    gossip = AdminState.from_wire(rep.admin)
                except ValueError as exc:
                    log.debug("ignoring admin state from %s: %s", p, exc)
                else:
                    if gossip.newer_than(self.admin):
                        self._adopt_admin(gossip, f"from {p}")
            if rep is not None:
                self._note_config(p, rep.config)
            heard = [t for (peer, _), t in snap.last_heard.items() if peer == p]
            pviews[p] = PeerView(
                p,
                mem.peers[p],
                rep.state if rep else None,
                dict(rep.hierarchies) if rep else {},
                fenced=p in self.fenced,
                heard_at=max(heard) if heard else None,
            )
        return ClusterView(
            me=self.me,
            config=self.cfg,
            now=now,
            node_state=self.state,
            settled=self._probed
            and (
                now - self._started >= t.grace
                or (bool(peers) and all(s == PeerState.UP for s in mem.peers.values()))
            ),
            peers=pviews,
            local=self.executor.local_view(),
            admin=self.admin,
            tie_breaker=self.tie_breaker,
            fencing=frozenset(self.fencing),
        )

    def cycle(self) -> None:
        now = time.monotonic()
        if self._last_cycle and now - self._last_cycle > self.cfg.timings.deadline / 2:
            log.warning(
                "decision loop stalled %.2f s; peers get a fresh deadline", now - self._last_cycle
            )
            self.hb.note_stall(now)
        self._last_cycle = now
        if self.watchdog is not None:
            self.watchdog.loop_alive()
        self.sd.loop_alive()
        self._apply_cleanups()
        self._watch_self_fence()
        view = self.build_view(now)
        self._check_tie_breaker(now)
        self.view = view
        self.metrics.on_cycle(view)
        actions = decider.decide(view)
        blocked_now: dict[str, str] = {}
        for action in actions:
            self.apply(action, blocked_now)
        for h, why in blocked_now.items():
            if self.blocked.get(h) != why:
                self.emit("hierarchy", hierarchy=h, task="blocked", desc=why)
        self.blocked = blocked_now
        self.publish()

    def _apply_cleanups(self) -> None:
        for h, n in self.admin.cleanup.items():
            fresh = h in self.executor.hier and n > self._cleanups_done.get(h, 0)
            if fresh and self.executor.cleanup(h):
                self._cleanups_done[h] = n

    def apply(self, action: Action, blocked: dict[str, str]) -> None:
        match action:
            case NodeEvent():
                old = self.state
                self.state = transition("node", self.state, action.event)
                if old in (NodeState.STANDBY, NodeState.NO_QUORUM) and self.state == (
                    NodeState.ONLINE
                ):
                    self._hold_until = time.monotonic() + self.online_hold()
                if old != self.state:
                    self.emit(
                        "node",
                        task=action.event,
                        state=self.state,
                        previous=old,
                        desc=action.reason,
                    )
            case Blocked():
                blocked[action.hierarchy] = action.reason
            case ClearSwitchover():
                sw = {k: v for k, v in self.admin.switchover.items() if k != action.hierarchy}
                self._update_admin(switchover=sw)
            case StartHierarchy() if time.monotonic() < self._hold_until:
                blocked[action.hierarchy] = (
                    "back online: waiting for fresh heartbeats before starting anything"
                )
            case FenceNode():
                self.fencing.add(action.node)
                self._spawn(self._fence(action))
            case StopHierarchy(self_fence=True) if self.watchdog is not None:
                if self.executor.submit(action):
                    self._self_fencing.add(action.hierarchy)
                    if self.watchdog.hold(action.hierarchy):
                        self.emit(
                            "node",
                            task="watchdog-hold",
                            hierarchy=action.hierarchy,
                            desc=f"self-fencing: no watchdog kicks until {action.hierarchy} "
                            f"stopped (reset in {self.cfg.watchdog_timeout:g} s otherwise)",
                        )
            case _:
                if self.executor.submit(action):
                    log.debug("submitted %s", action)

    def _watch_self_fence(self) -> None:
        """Kick the watchdog again once a self-fencing stop completed; a stop that failed keeps
        it held, so the device resets this node (the stop-failed fence, done by the hardware)."""
        if self.watchdog is None:
            return
        for h in sorted(self._self_fencing):
            state = self.executor.hier[h].state
            if state in (HierarchyState.STOPPED, HierarchyState.FAILED):
                self._self_fencing.discard(h)
                self.watchdog.release(h)
                self.emit("node", task="watchdog-release", hierarchy=h, desc=f"{h} stopped")

    def online_hold(self) -> float:
        """How long a node back from standby (or from lost quorum) starts nothing.

        While we were ineligible a peer may have decided to start a hierarchy; our view of it
        lags by up to a heartbeat interval plus scheduling, so right after coming back we could
        take ourselves for the desired owner of a hierarchy that a peer is starting this very
        moment, and start it too (same generation: two copies until the tie is seen). Waiting
        until the peers have heard we are back and we have heard their answer closes that race:
        our next heartbeat (one interval), their next cycle and heartbeat (1.5 intervals), and
        slack for a loaded machine. Failover after a peer's death never waits for this.
        """
        return decider.fresh_view_hold(self.cfg.timings)

    def publish(self) -> None:
        local = self.executor.local_view()
        reports = {}
        for h, lh in local.items():
            codes = "".join(
                RESOURCE_CODES[str(s)] for s in self.executor.hier[h].resources.values()
            )
            reports[h] = HierReport(str(lh.state), lh.gen, len(lh.failures), codes, lh.taken)
        self.hb.set_payload(str(self.state), reports, self.admin.to_wire())

    async def _probe(self) -> None:
        try:
            await self.executor.probe(lambda h: self.admin.maintenance or h in self.admin.frozen)
        finally:
            self._probed = True

    def _check_tie_breaker(self, now: float) -> None:
        """Quorate mode: ask the tie-breaker once a second, tie or not. Its answer counts only
        while exactly half the votes are present, but asking all along lets a quorum-LUN holder
        prove it is alive (tiebreaker.py), so a node cut off from it alone cannot take it over;
        and when a tie begins the answer is at most a second old, which is safe because a
        challenger must see the holder silent for longer than that (`challenge`)."""
        if self.cfg.quorum != "quorate" or not self.cfg.tie_breaker or self.mem is None:
            return
        if now - self._tie_checked < 1.0 or (self._tie_task and not self._tie_task.done()):
            return
        self._tie_checked = now
        self._tie_task = asyncio.create_task(self._run_tie_breaker())

    async def _run_tie_breaker(self) -> None:
        # Not the deadline: a tie-breaker is a program (an iSCSI login, a Python start-up); while
        # it runs nothing changes, and only a hung one should take this long.
        timeout = max(self.cfg.timings.deadline, 2.0)
        rc, out = await fencing.run_command(list(self.cfg.tie_breaker), timeout)
        held = rc == 0
        if held != self.tie_breaker:
            state = "held" if held else "not held"
            self.emit("quorum", task="tie-breaker", rc=rc, desc=f"{state} {out}".strip())
        self.tie_breaker = held

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fence(self, action: FenceNode) -> None:
        self.emit(
            "fencing",
            peer=action.node,
            hierarchy=action.hierarchy,
            task="fence",
            desc=action.reason,
        )
        try:
            result = await fencing.fence(self.cfg, action.node)
        finally:
            self.fencing.discard(action.node)
        if result.ok:
            self.fenced.add(action.node)
        self.emit(
            "fencing",
            peer=action.node,
            task="fenced" if result.ok else "fence-failed",
            rc=0 if result.ok else 1,
            desc=result.detail,
            elapsed=round(result.elapsed, 3),
        )

    def _note_config(self, peer: str, digest: str) -> None:
        """A peer announcing another configuration is an event (and a notification), once per
        change: two nodes deciding from different files can disagree on who runs what."""
        before = self._config_seen.get(peer)
        if not digest or before == digest:
            return
        self._config_seen[peer] = digest
        if digest != self.cfg.digest:
            self.emit(
                "config",
                peer=peer,
                task="config-mismatch",
                desc=f"{peer} runs configuration {digest}, this node {self.cfg.digest}"
                f" (ophiura cluster config diff --node {peer})",
            )
        elif before is not None:  # agreeing again (first sight of an equal file: no news)
            self.emit("config", peer=peer, task="config-match", desc=f"same configuration {digest}")

    def _config_status(self) -> dict[str, Any]:
        snap = self.hb.snapshot()
        digests = {self.me: self.cfg.digest}
        for p in self.cfg.nodes:
            rep = snap.reports.get(p)
            if p != self.me and rep is not None:
                digests[p] = rep.config or None
        return {
            "path": self.cfg.source,
            "digest": self.cfg.digest,
            "nodes": digests,
            "differ": sorted(n for n, d in digests.items() if d and d != self.cfg.digest),
        }

    # -- reload -------------------------------------------------------------------------------

    async def reload(self, why: str = "request") -> dict[str, Any]:
        """Re-read the file, validate it, apply what is live-applicable; else change nothing.

        Reading and validating run off the loop (validate asks OCF agents for their meta-data);
        planning and applying run on it, between two cycles, one reload at a time."""
        async with self._reload_lock:
            new, problems = await asyncio.to_thread(self._read_config, self.cfg.source)
            if new is None:
                return self._reload_result(why, [], problems)
            if new.digest == self.cfg.digest:
                return self._reload_result(why, [], [], unchanged=True)
            p = reloader.plan(self.cfg, new, self._held())
            if p.ok:
                self._apply_config(new)
            return self._reload_result(why, list(p.changes), list(p.refused))

    @staticmethod
    def _read_config(path: str) -> tuple[ClusterConfig | None, list[str]]:
        from ophiura.cluster.validation import validate

        try:
            new = load(path)
        except ConfigError as exc:
            return None, [str(exc)]
        problems = validate(new)
        if problems:
            return None, [f"{path} is not valid: {p}" for p in problems]
        return new, []

    def _held(self) -> dict[str, frozenset[str]]:
        held: dict[str, set[str]] = {}
        for h, lh in self.executor.local_view().items():
            if lh.state in HOLDING or lh.busy:
                held.setdefault(h, set()).add(self.me)
        if self.view is not None:
            for p, pv in self.view.peers.items():
                for h, rep in pv.hierarchies.items():
                    if rep.state in {str(x) for x in HOLDING}:
                        held.setdefault(h, set()).add(p)
        return {h: frozenset(n) for h, n in held.items()}

    def _apply_config(self, new: ClusterConfig) -> None:
        self.cfg = new
        self.executor.reload(new)
        self.hb.cfg = new  # timings (interval) and the digest it announces
        self.notify.notifiers = new.notifiers
        if new.notifiers and self.notify._thread is None:
            self.notify.start()
        self._config_seen.clear()  # re-compare every peer against the new digest
        self.publish()

    def _reload_result(
        self, why: str, changes: list[str], refused: list[str], unchanged: bool = False
    ) -> dict[str, Any]:
        ok = not refused
        if unchanged:
            desc = "file unchanged"
        elif ok:
            desc = "applied: " + "; ".join(changes)
        else:
            desc = "refused, nothing changed: " + "; ".join(refused)
        self.emit("config", task="reload", rc=0 if ok else 1, desc=f"{desc} ({why})")
        return {
            "node": self.me,
            "ok": ok,
            "digest": self.cfg.digest,
            "changes": changes,
            "refused": refused,
        }

    # -- admin state --------------------------------------------------------------------------

    def _load_admin(self) -> AdminState:
        """The admin state this node last knew (maintenance, frozen, standby): a daemon restarted
        while the whole cluster is in maintenance must not act before a peer's gossip says so,
        and with every node restarted there is no peer to say so."""
        try:
            return AdminState.from_wire(json.loads(self._admin_file.read_text()))
        except FileNotFoundError:
            return AdminState()
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self._admin_file, exc)
            return AdminState()

    def _save_admin(self) -> None:
        tmp = self._admin_file.with_suffix(".tmp")
        try:
            self._admin_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.admin.to_wire()))
            tmp.replace(self._admin_file)
        except OSError as exc:
            log.warning("cannot save the admin state to %s: %s", self._admin_file, exc)

    def _adopt_admin(self, new: AdminState, why: str) -> None:
        self.admin = new
        self._save_admin()
        self.emit("admin", task="admin-state", desc=f"version {new.version} by {new.origin} {why}")

    def _update_admin(self, **changes: Any) -> None:
        new = replace(self.admin, version=self.admin.version + 1, origin=self.me, **changes)
        self._adopt_admin(new, "(local)")
        self.publish()

    async def handle(self, req: dict[str, Any]) -> Any:
        op = req.get("op")
        cfg = self.cfg

        def need(key: str, choices: Any) -> str:
            value = req.get(key)
            if value not in choices:
                raise AdminError(
                    f"{op}: unknown {key} {value!r} (known: {', '.join(sorted(choices))})"
                )
            return str(value)

        if op == "status":
            return self.status()
        if op == "reload":
            return await self.reload("ophiura cluster reload")
        if op == "config":
            return {"path": cfg.source, "digest": cfg.digest, "text": cfg.text}
        if op in ("standby", "online"):
            node = need("node", cfg.nodes)
            sb = self.admin.standby | {node} if op == "standby" else self.admin.standby - {node}
            self._update_admin(standby=frozenset(sb))
        elif op in ("freeze", "unfreeze"):
            h = need("hierarchy", cfg.hierarchies)
            fr = self.admin.frozen | {h} if op == "freeze" else self.admin.frozen - {h}
            self._update_admin(frozen=frozenset(fr))
        elif op == "cleanup":
            h = need("hierarchy", cfg.hierarchies)
            self._update_admin(cleanup={**self.admin.cleanup, h: self.admin.cleanup.get(h, 0) + 1})
        elif op == "maintenance":
            self._update_admin(maintenance=bool(req.get("on")))
        elif op == "switchover":
            h = need("hierarchy", cfg.hierarchies)
            to = need("to", cfg.hierarchies[h].nodes)
            if h in self.admin.frozen:
                raise AdminError(f"switchover: {h} is frozen (unfreeze it first)")
            self._update_admin(switchover={**self.admin.switchover, h: to})
        elif op == "block-link" and cfg.test_hooks:
            self.hb.block_link(int(req.get("link", 0)), bool(req.get("blocked", True)))
            self.emit("test", task="block-link", link=req.get("link"), desc=str(req.get("blocked")))
        elif op == "step-clock" and cfg.test_hooks:
            seconds = req.get("seconds")
            if not isinstance(seconds, int | float) or isinstance(seconds, bool):
                raise AdminError(f"step-clock: seconds must be a number, not {seconds!r}")
            self.emit("test", task="step-clock", desc=f"wall clock {clock.step(seconds):+.3f} s")
        else:
            raise AdminError(f"unknown request {op!r}")
        return {"admin": self.admin.to_wire()}

    def status(self) -> dict[str, Any]:
        view = self.view
        snap = self.hb.snapshot()
        nodes: dict[str, Any] = {
            self.me: {"state": "self", "node_state": str(self.state), "links": {}}
        }
        if view is not None and self.mem is not None:
            for p, pv in view.peers.items():
                nodes[p] = {
                    "state": str(pv.state),
                    "node_state": pv.node_state,
                    "fenced": pv.fenced,
                    "links": {ln.name: str(self.mem.links[(p, ln.name)]) for ln in self.cfg.links},
                    "last_heard": {  # seconds ago, per link (never heard: absent)
                        ln: round(time.monotonic() - t, 3)
                        for (peer, ln), t in snap.last_heard.items()
                        if peer == p
                    },
                }
        local = self.executor.status()
        counts = self.executor.fail_counts()
        hiers: dict[str, Any] = {}
        for h in self.cfg.hierarchies:
            states = {self.me: local[h]["state"]}
            names = list(self.cfg.hierarchies[h].resources)
            resources = {self.me: local[h]["resources"]}
            gens = {self.me: local[h]["gen"]}
            failures = {self.me: counts.get(h, {})}
            if view is not None:
                for p, pv in view.peers.items():
                    rep = pv.hierarchies.get(h)
                    if rep is not None and pv.state == PeerState.UP:
                        states[p], gens[p] = rep.state, rep.gen
                        resources[p] = {
                            r: CODE_RESOURCES.get(c, "?")
                            for r, c in zip(names, rep.resources, strict=False)
                        }
                        failures[p] = {"total": rep.failures} if rep.failures else {}
            owners = [n for n, s in states.items() if s in {str(x) for x in ACTIVE}]
            owner = max(owners, key=lambda n: gens[n]) if owners else None
            hiers[h] = {
                "owner": owner,
                "running_on": sorted(n for n, s in states.items() if s == HierarchyState.RUNNING),
                "states": states,
                "gen": max(gens.values()),
                "local": local[h],
                "resources": resources,
                "fail_counts": {n: c for n, c in failures.items() if c},
                "frozen": h in self.admin.frozen,
                "switchover": self.admin.switchover.get(h),
                "blocked": self.blocked.get(h),
            }
        return {
            "cluster": self.cfg.name,
            "node": self.me,
            "state": str(self.state),
            "quorum_mode": self.cfg.quorum,
            "quorate": decider.quorate(view) if view else None,
            "admin": self.admin.to_wire(),
            "config": self._config_status(),
            # this node's listeners beyond loopback that leave something open (plain HTTP)
            "exposure": [w for w in [self.web.warning if self.web else None] if w],
            "nodes": nodes,
            "hierarchies": hiers,
            "heartbeat": {
                "sent": snap.sent,
                "rejected": snap.rejected,
                "blocked_links": sorted(snap.blocked_links),
            },
            "dropped": {"events": self.events.dropped, "notifications": self.notify.dropped},
            "events": self.events.last(20),
        }

    # -- life ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stop(); then optionally stop local resources and leave."""
        self._loop = asyncio.get_running_loop()
        os.environ.setdefault("OPHIURA_NODE", self.me)
        self.events.start()
        self.notify.start()
        self.hb.start()
        host, port = self.cfg.nodes[self.me].admin
        try:
            await self.admin_server.start(host, port)
        except OSError as exc:
            self.hb.stop()
            raise OSError(
                exc.errno, f"cannot listen for admin requests on {host}:{port}: {exc.strerror}"
            ) from exc
        self.web = await web_hook.start(self)
        if self.watchdog is not None:
            # Armed last: a daemon that fails to start must not leave a device ticking.
            try:
                timeout = self.watchdog.open()
            except WatchdogError:
                self.hb.stop()
                await self.admin_server.stop()
                if self.web is not None:
                    await self.web.stop()
                raise
            self.emit(
                "node",
                task="watchdog-open",
                desc=f"{self.watchdog.path}: "
                + (f"timeout {timeout} s" if timeout is not None else "not a watchdog device"),
            )
        self._started = time.monotonic()
        self.emit(
            "node", task="start", state=self.state, desc=f"incarnation {self.hb.incarnation:x}"
        )
        # links bound, admin socket listening (and the REST API, if any): systemd may go on
        self.sd.ready(f"node {self.me}: {len(self.cfg.links)} links, admin on {host}:{port}")
        self._spawn(self._probe())
        try:
            while not self._stop.is_set():
                tick = max(0.01, self.cfg.timings.interval / 2)  # a reload may change it
                self.cycle()
                wait = tick
                if self._next_expiry is not None:  # wake right after a deadline passes
                    wait = min(tick, max(0.001, self._next_expiry - time.monotonic() + 0.001))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
        finally:
            await self._leave()

    def _leaving_view(self) -> ClusterView:
        view = self.view or self.build_view(time.monotonic())
        return replace(view, local=self.executor.local_view(), admin=self.admin)

    async def _leave(self) -> None:
        self.sd.stopping(f"node {self.me}: leaving")
        event = decider.leaving_event(self._leaving_view(), self.keep_resources)
        self.state = transition("node", self.state, event)
        self.publish()
        self.emit(
            "node",
            task=event,
            state=self.state,
            desc="leaving hierarchies running (restart: they are adopted)"
            if event == "restart"
            else "stopping local resources",
        )
        publisher = asyncio.create_task(self._publish_while_leaving())
        try:
            await self.executor.quiesce()
            plan = decider.shutdown_plan(self._leaving_view(), self.keep_resources)
            for action in plan:
                if isinstance(action, KeepRunning):
                    self.emit(
                        "hierarchy",
                        hierarchy=action.hierarchy,
                        task="keep-running",
                        desc=f"left running, unmanaged: {action.reason}",
                    )
            await self.executor.stop_all(
                [a.hierarchy for a in plan if isinstance(a, StopHierarchy)]
            )
        except TimeoutError:
            log.error("shutdown: stopping local resources timed out")
        finally:
            publisher.cancel()
        self.publish()
        # Let peers hear "stopped" before we fall silent, so they start at once, not a deadline
        # later.
        await asyncio.sleep(3 * self.cfg.timings.interval)
        for task in list(self._tasks):
            task.cancel()
        await self.admin_server.stop()
        if self.web is not None:
            await self.web.stop()
        self.hb.stop()
        if self.watchdog is not None:
            self._watch_self_fence()  # a self-fencing stop that completed while leaving
            disarmed = self.watchdog.close()
            self.emit(
                "node",
                task="watchdog-close",
                desc="magic close: disarmed"
                if disarmed
                else "self-fence pending: left armed, the device will reset this node",
            )
        self.notify.stop()
        self.events.stop()

    async def _publish_while_leaving(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(self.cfg.timings.interval / 2)

    def stop(self) -> None:
        self._stop.set()

    def sighup(self) -> None:
        """SIGHUP reloads the configuration (never kills the daemon, orphaning services)."""
        self._spawn(self.reload("SIGHUP"))
