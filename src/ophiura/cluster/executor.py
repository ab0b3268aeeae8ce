"""Performs the decision function's actions, off the decision loop.

Each hierarchy has at most one operation in flight (start, stop, restart), run as its own asyncio
task so that a slow `start` never delays the next decision cycle, and other hierarchies proceed in
parallel. Inside an operation the dependency graph runs with independent branches in parallel:
start bottom-up with the own-able resource acquired before anything else, stop top-down with the
own-able resource released after everything else. Stop failures escalate: graceful stop, then a
forced stop (the agent's `force_stop` if it has one, else a second stop), then STOP_FAILED, which
the other nodes answer by fencing us (and the event says so, with the agent's output).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ophiura.cluster import agentload
from ophiura.cluster.agents.base import Agent, OcfCode, Outcome, Resource
from ophiura.cluster.config import ClusterConfig, Hierarchy
from ophiura.cluster.decide import fresh_view_hold, restart_allowed
from ophiura.cluster.model import (
    Action,
    ClearFailures,
    LocalHier,
    RestartResource,
    StartHierarchy,
    StopHierarchy,
)
from ophiura.cluster.state import HierarchyState, ResourceState, transition

log = logging.getLogger(__name__)
H = HierarchyState
R = ResourceState
Emit = Callable[..., None]


@dataclass
class HierRuntime:
    """A hierarchy's local truth; only the executor writes it."""

    spec: Hierarchy
    state: HierarchyState = H.STOPPED
    gen: int = 0
    resources: dict[str, ResourceState] = field(default_factory=dict)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, resource)
    failed: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    monitors: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    last: dict[str, str] = field(default_factory=dict)  # resource -> last outcome text
    hold_until: float = 0.0  # eligible again after FAILED/STOP_FAILED: no start before this
    taken: bool = False  # the own-able resource's monitor said another node holds it now

    def __post_init__(self) -> None:
        self.resources = dict.fromkeys(self.spec.resources, R.STOPPED)

    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


async def run_graph(
    names: Iterable[str],
    after: Callable[[str], Iterable[str]],
    op: Callable[[str], Awaitable[bool]],
    stop_on_failure: bool,
) -> tuple[set[str], set[str]]:
    """Run `op` on every name once all names it must come `after` succeeded; in parallel.

    A name whose predecessor failed is skipped. With `stop_on_failure` nothing new begins after
    the first failure (starting), else independent branches carry on (stopping).
    Returns (succeeded, failed).
    """
    pending = set(names)
    pred = {n: {d for d in after(n) if d in pending} for n in pending}
    ok: set[str] = set()
    bad: set[str] = set()
    skipped: set[str] = set()
    running: dict[asyncio.Task[bool], str] = {}
    try:
        while pending or running:
            changed = True
            while changed:  # a failed or skipped predecessor skips its successors
                changed = False
                for n in list(pending):
                    if pred[n] & (bad | skipped):
                        pending.discard(n)
                        skipped.add(n)
                        changed = True
            if stop_on_failure and bad:
                skipped |= pending
                pending.clear()
            for n in sorted(pending):
                if pred[n] <= ok:
                    running[asyncio.create_task(op(n))] = n
                    pending.discard(n)
            if not running:
                break  # only a cycle could leave names pending here (validate() forbids them)
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                n = running.pop(t)
                (ok if t.result() else bad).add(n)
    finally:
        for t in running:
            t.cancel()
    return ok, bad


class Executor:
    def __init__(
        self,
        cfg: ClusterConfig,
        me: str,
        emit: Emit,
        agent_for: Callable[[str], Agent] = agentload.agent_for,
        clock: Callable[[], float] = time.monotonic,
        generations: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.me = me
        self.emit = emit
        self.agent_for = agent_for
        self.clock = clock
        self.hier = {name: HierRuntime(h) for name, h in cfg.hierarchies.items()}
        # The generation each hierarchy last started at here, kept across restarts: a node that
        # took a hierarchy over and then restarted must still report the generation it took it
        # at, or a loser's older "taken" report looks like a takeover nobody can see
        # (decide._taken_unseen) and blocks the hierarchy everywhere (found by ophiura torture
        # --mode cluster). None: remembered in memory only.
        self._generations = generations
        for name, gen in self._load_generations().items():
            if name in self.hier:
                self.hier[name].gen = gen

    def _load_generations(self) -> dict[str, int]:
        if self._generations is None:
            return {}
        try:
            data = json.loads(self._generations.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self._generations, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, int) and v >= 0}

    def _save_generations(self) -> None:
        """Durable before the start goes on: a crash right after must not forget it."""
        if self._generations is None:
            return
        gens = {name: rt.gen for name, rt in self.hier.items() if rt.gen}
        tmp = self._generations.with_suffix(".tmp")
        try:
            self._generations.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(gens, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self._generations)
        except OSError as exc:
            log.warning("cannot save generations to %s: %s", self._generations, exc)

    # -- the view the decision function reads -------------------------------------------------

    def local_view(self) -> dict[str, LocalHier]:
        now = self.clock()
        out = {}
        for name, rt in self.hier.items():
            rt.failures = [(t, r) for t, r in rt.failures if now - t <= rt.spec.failure_expiry]
            order = [r for r in rt.spec.resources if r in rt.failed]
            out[name] = LocalHier(
                rt.state,
                rt.gen,
                tuple(t for t, _ in rt.failures),
                tuple(order),
                rt.busy(),
                rt.hold_until,
                rt.taken,
            )
        return out

    def fail_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for name, rt in self.hier.items():
            for _, r in rt.failures:
                counts.setdefault(name, {}).setdefault(r, 0)
                counts[name][r] += 1
        return counts

    def submit(self, action: Action) -> bool:
        """Begin `action` in the background; False if that hierarchy is busy."""
        rt = self.hier.get(action.hierarchy)
        if rt is None or rt.busy():
            return False
        coro: Awaitable[None]
        match action:
            case StartHierarchy():
                coro = self._start(rt, action.gen, action.reason)
            case StopHierarchy():
                coro = self._stop(rt, action.reason, action.failover)
            case RestartResource():
                coro = self._restart(rt, action.resource, action.reason)
            case ClearFailures():
                if rt.state == H.FAILED:
                    self._hold(rt)
                self._set(rt, "expire")
                rt.failures.clear()
                return True
            case _:
                raise TypeError(f"executor cannot perform {type(action).__name__}")
        rt.task = asyncio.create_task(self._guard(rt, coro), name=f"{action.hierarchy}")
        return True

    async def _guard(self, rt: HierRuntime, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not kill the daemon; it is logged with a traceback
            log.exception("hierarchy %s: operation crashed", rt.spec.name)
            self.emit("hierarchy", hierarchy=rt.spec.name, task="internal-error", rc=1)

    def _set(self, rt: HierRuntime, event: str) -> None:
        old = rt.state
        rt.state = transition("hierarchy", rt.state, event)
        if rt.state in (H.STOPPED, H.STARTING):
            rt.taken = False  # FAILED expired or cleaned up, or we own it again
        if rt.state != old:
            self.emit("hierarchy", hierarchy=rt.spec.name, task=event, state=rt.state, previous=old)

    def _rset(self, rt: HierRuntime, res: str, event: str) -> None:
        rt.resources[res] = transition("resource", rt.resources[res], event)

    def _hold(self, rt: HierRuntime) -> None:
        """Eligible here again: while we were not, a peer may have taken the hierarchy over, and
        our view of it can be a heartbeat old. Start nothing until the view is fresh."""
        rt.hold_until = self.clock() + fresh_view_hold(self.cfg.timings)

    def cleanup(self, name: str) -> bool:
        """Admin cleanup: forget failures here; a FAILED or STOP_FAILED hierarchy becomes STOPPED.

        For STOP_FAILED the operator asserts that it is down (as Pacemaker's `crm_resource
        --cleanup`); False if an operation is in flight (the caller retries next cycle).
        """
        rt = self.hier[name]
        if rt.busy():
            return False
        rt.failures.clear()
        rt.failed.clear()
        for r, state in rt.resources.items():
            if state == R.STOP_FAILED:
                self._rset(rt, r, "cleanup")
        if rt.state in (H.FAILED, H.STOP_FAILED):
            self._hold(rt)
            self._set(rt, "cleanup")
        self.emit("hierarchy", hierarchy=name, task="cleanup", desc="fail counts cleared by admin")
        return True

    # -- agent calls --------------------------------------------------------------------------

    def _resolve(self, res: Resource) -> Resource:
        """`{node}` in a param becomes this node's name: one file, per-node values (keys, names)."""
        if any("{node}" in v for v in res.params.values()):
            params = {k: v.replace("{node}", self.me) for k, v in res.params.items()}
            return replace(res, params=params)
        return res

    async def _call(self, method: str, res: Resource, timeout: float) -> Outcome:
        t0 = self.clock()
        res = self._resolve(res)
        try:
            agent = self.agent_for(res.kind)
            fn = getattr(agent, method)
            # The agent bounds itself; this bound catches an agent that does not.
            return await asyncio.wait_for(fn(res, timeout), timeout + 5.0)
        except TimeoutError:
            return Outcome(
                OcfCode.ERR_GENERIC, self.clock() - t0, "agent ignored its timeout", True
            )
        except agentload.AgentLookupError as exc:
            return Outcome(OcfCode.ERR_INSTALLED, 0.0, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an agent's bug is the resource's failure, not the daemon's
            log.exception("agent %s %s of %s raised", res.kind, method, res.name)
            return Outcome(OcfCode.ERR_GENERIC, self.clock() - t0, f"agent raised {exc!r}")

    def _note(self, rt: HierRuntime, res: str, task: str, out: Outcome) -> None:
        text = "timed out" if out.timed_out else out.code.name
        rt.last[res] = f"{task}: {text} ({out.elapsed:.2f} s)"
        self.emit(
            "resource",
            hierarchy=rt.spec.name,
            resource=res,
            task=task,
            rc=int(out.code),
            desc=text,
            elapsed=round(out.elapsed, 3),
            output=out.output[-500:],
        )

    async def _start_one(self, rt: HierRuntime, name: str) -> bool:
        res = rt.spec.resources[name].resource
        self._rset(rt, name, "start")
        out = await self._call("start", res, res.start_timeout)
        self._note(rt, name, "start", out)
        if out.ok:
            self._rset(rt, name, "started")
            return True
        self._rset(rt, name, "start_failed")
        return False

    async def _stop_one(self, rt: HierRuntime, name: str) -> bool:
        res = rt.spec.resources[name].resource
        if rt.resources[name] == R.STOPPED:
            return True
        self._rset(rt, name, "stop")
        out = await self._call("stop", res, res.stop_timeout)
        self._note(rt, name, "stop", out)
        if not out.ok:
            agent = None
            with contextlib.suppress(agentload.AgentLookupError):
                agent = self.agent_for(res.kind)
            method = "force_stop" if callable(getattr(agent, "force_stop", None)) else "stop"
            out = await self._call(method, res, res.stop_timeout)
            self._note(rt, name, "forced-stop", out)
        if out.ok:
            self._rset(rt, name, "stopped")
            return True
        self._rset(rt, name, "stop_failed")
        return False

    # -- operations ---------------------------------------------------------------------------

    def _fail(self, rt: HierRuntime, res: str) -> None:
        rt.failures.append((self.clock(), res))

    async def _start(self, rt: HierRuntime, gen: int, reason: str) -> None:
        spec = rt.spec
        rt.gen = gen
        self._save_generations()  # small and synchronous: nothing may run in between
        rt.failed.clear()
        self._set(rt, "start")
        self.emit("hierarchy", hierarchy=spec.name, task="acquire-start", desc=reason, gen=gen)
        names = list(spec.resources)
        ok: set[str] = set()
        bad: set[str] = set()
        if spec.ownable:
            # Acquire first, alone: nothing may touch the data before we own it.
            (ok if await self._start_one(rt, spec.ownable) else bad).add(spec.ownable)
            names.remove(spec.ownable)
        if not bad:
            ok2, bad = await run_graph(names, spec.depends, lambda n: self._start_one(rt, n), True)
            ok |= ok2
        if not bad:
            self._set(rt, "started")
            self._start_monitors(rt, spec.resources)
            return
        for r in bad:
            self._fail(rt, r)
        clean = await self._stop_set(rt, set(spec.resources))
        if not clean:
            self._set(rt, "stop_failed")
        elif restart_allowed(tuple(t for t, _ in rt.failures), self.clock(), spec):
            self._set(rt, "start_failed")
        else:
            self._set(rt, "exhausted")

    async def _stop_set(self, rt: HierRuntime, names: set[str]) -> bool:
        """Stop `names` top-down (own-able last); True if all stopped."""
        spec = rt.spec

        def after(n: str) -> list[str]:
            deps = [d for d in spec.dependents(n) if d in names]
            if n == spec.ownable:
                deps = [d for d in names if d != n]
            return deps

        for n in names:
            self._stop_monitor(rt, n)
        _, bad = await run_graph(names, after, lambda n: self._stop_one(rt, n), False)
        return not bad and all(rt.resources[n] == R.STOPPED for n in names)

    async def _stop(self, rt: HierRuntime, reason: str, failover: bool) -> None:
        spec = rt.spec
        if rt.state in (H.STOPPED, H.FAILED):
            return
        self._set(rt, "failover" if failover and rt.state != H.STOP_FAILED else "stop")
        self.emit("hierarchy", hierarchy=spec.name, task="stop", desc=reason)
        if await self._stop_set(rt, set(spec.resources)):
            rt.failed.clear()
            self._set(rt, "exhausted" if failover else "stopped")
        else:
            self._set(rt, "stop_failed")
            self.emit(
                "hierarchy",
                hierarchy=spec.name,
                task="stop-failed",
                desc="a stop failed even when forced: the other nodes must fence this node "
                f"before they start {spec.name} ({'; '.join(rt.last.values())})",
            )

    def _above(self, spec: Hierarchy, name: str) -> set[str]:
        """`name` and everything that depends on it, transitively."""
        out, todo = {name}, [name]
        while todo:
            for d in spec.dependents(todo.pop()):
                if d not in out:
                    out.add(d)
                    todo.append(d)
        return out

    async def _restart(self, rt: HierRuntime, name: str, reason: str) -> None:
        spec = rt.spec
        self._set(rt, "restart")
        self.emit("hierarchy", hierarchy=spec.name, task="restart", resource=name, desc=reason)
        group = self._above(spec, name)
        ok = await self._stop_set(rt, group)
        if ok:
            _, bad = await run_graph(
                group,
                lambda n: [d for d in spec.depends(n) if d in group],
                lambda n: self._start_one(rt, n),
                True,
            )
            if not bad:
                rt.failed = [f for f in rt.failed if f not in group]
                self._set(rt, "restarted")
                self._start_monitors(rt, group)
                return
            for r in bad:
                self._fail(rt, r)
        self._set(rt, "restart_failed")
        if await self._stop_set(rt, set(spec.resources)):
            rt.failed.clear()
            self._set(rt, "exhausted")
        else:
            self._set(rt, "stop_failed")

    def reload(self, cfg: ClusterConfig) -> None:
        """Take a new configuration that reload.plan() accepted: hierarchies that run here keep
        their runtime (state, generation, failures, monitors) with the new spec; new ones are
        added, removed ones (stopped here) dropped, and one stopped here is rebuilt."""
        self.cfg = cfg
        for name in [n for n in self.hier if n not in cfg.hierarchies]:
            if self.hier[name].busy() or self.hier[name].state not in (H.STOPPED, H.FAILED):
                continue  # plan() refuses this; never drop a runtime that holds resources
            del self.hier[name]
        for name, spec in cfg.hierarchies.items():
            rt = self.hier.get(name)
            if rt is None:
                self.hier[name] = HierRuntime(spec)
            elif set(rt.spec.resources) == set(spec.resources):
                rt.spec = spec
            elif rt.state == H.STOPPED and not rt.busy():
                self.hier[name] = HierRuntime(spec, failures=rt.failures)

    # -- monitoring ---------------------------------------------------------------------------

    def _start_monitors(self, rt: HierRuntime, names: Iterable[str]) -> None:
        for n in names:
            self._stop_monitor(rt, n)
            rt.monitors[n] = asyncio.create_task(self._monitor(rt, n), name=f"monitor {n}")

    def _stop_monitor(self, rt: HierRuntime, name: str) -> None:
        task = rt.monitors.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _monitor(self, rt: HierRuntime, name: str) -> None:
        """Poll until the first failure: that failure is the decision function's to act on.

        The spec is read afresh each round: a reload may change the interval and timeout."""
        while rt.resources.get(name) == R.RUNNING:
            res = rt.spec.resources[name].resource
            await asyncio.sleep(res.monitor_interval)
            res = rt.spec.resources[name].resource
            if rt.resources.get(name) != R.RUNNING:
                return
            out = await self._call("monitor", res, res.monitor_timeout)
            if rt.resources.get(name) != R.RUNNING:
                return  # stopped while we asked
            if out.code in (OcfCode.SUCCESS, OcfCode.DEGRADED) and not out.timed_out:
                continue
            self._note(rt, name, "monitor", out)
            if name == rt.spec.ownable and out.taken:
                rt.taken = True
            self._rset(rt, name, "monitor_failed")
            self._fail(rt, name)
            if name not in rt.failed:
                rt.failed.append(name)
            return

    # -- probing ------------------------------------------------------------------------------

    async def probe(self, leave_alone: Callable[[str], bool] = lambda _: False) -> None:
        """At daemon start: find out what already runs here (a restarted daemon's leftovers).

        A hierarchy found wholly running is adopted as RUNNING with generation 0, so a peer that
        took it over meanwhile (generation >= 1) wins and we stop ours; one found partly running
        is stopped, so every hierarchy starts from a known state, unless `leave_alone(name)`
        (maintenance, frozen: the operator said nothing is to be touched).
        """
        await asyncio.gather(*(self._probe(rt, leave_alone) for rt in self.hier.values()))

    async def _probe(self, rt: HierRuntime, leave_alone: Callable[[str], bool]) -> None:
        names = list(rt.spec.resources)
        outs = await asyncio.gather(
            *(
                self._call(
                    "monitor",
                    rt.spec.resources[n].resource,
                    rt.spec.resources[n].resource.monitor_timeout,
                )
                for n in names
            )
        )
        found = [
            n
            for n, o in zip(names, outs, strict=True)
            if o.code == OcfCode.SUCCESS and not o.timed_out
        ]
        # `taken`: another node holds this own-able resource (its reservation, its epoch): not
        # running here, and nothing of ours to clean up.
        unclear = [
            n
            for n, o in zip(names, outs, strict=True)
            if o.code not in (OcfCode.SUCCESS, OcfCode.NOT_RUNNING) and not o.taken
        ]
        if not found and not unclear:
            return
        if len(found) != len(names) and leave_alone(rt.spec.name):
            self.emit(
                "hierarchy",
                hierarchy=rt.spec.name,
                task="probe",
                desc=f"found partly running (running: {', '.join(found) or 'none'}; "
                f"unclear: {', '.join(unclear) or 'none'}): left alone (maintenance or frozen)",
            )
            return
        for n in found:
            self._rset(rt, n, "probe_running")
        if len(found) == len(names):  # it keeps the generation it was started at here
            self._set(rt, "probed")
            self.emit(
                "hierarchy", hierarchy=rt.spec.name, task="probe", desc="found running: adopted"
            )
            self._start_monitors(rt, names)
            return
        self.emit(
            "hierarchy",
            hierarchy=rt.spec.name,
            task="probe",
            desc=f"found partly running (running: {', '.join(found) or 'none'}; "
            f"failed: {', '.join(unclear) or 'none'}): stopping",
        )
        for n in unclear:
            self._rset(rt, n, "probe_failed")  # in an unknown state: stop it to be sure
        if not await self._stop_set(rt, set(found) | set(unclear)):
            self._set(rt, "stop_failed")

    # -- shutdown -----------------------------------------------------------------------------

    async def quiesce(self, timeout: float = 120.0) -> None:
        """Shutdown, first half: cancel monitors, wait for operations in flight."""
        for rt in self.hier.values():
            for n in list(rt.monitors):
                self._stop_monitor(rt, n)
        pending = [rt.task for rt in self.hier.values() if rt.task and not rt.task.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def stop_all(
        self, names: Iterable[str], reason: str = "node shutting down", timeout: float = 120.0
    ) -> None:
        """Shutdown, second half: stop `names` (those held here), in parallel."""
        stops = [
            self._stop(self.hier[n], reason, False)
            for n in names
            if self.hier[n].state not in (H.STOPPED, H.FAILED)
        ]
        if stops:
            await asyncio.wait_for(asyncio.gather(*stops), timeout)

    async def shutdown(self, stop_resources: bool, timeout: float = 120.0) -> None:
        """Cancel monitors; wait for operations in flight; optionally stop what runs here."""
        await self.quiesce(timeout)
        if stop_resources:
            await self.stop_all(list(self.hier), timeout=timeout)

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "state": str(rt.state),
                "gen": rt.gen,
                "busy": rt.busy(),
                "resources": {r: str(s) for r, s in rt.resources.items()},
                "failed": list(rt.failed),
                "last": dict(rt.last),
            }
            for name, rt in self.hier.items()
        }
