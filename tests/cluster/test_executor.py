"""Executor: dependency order, parallel branches, own-able first/last, rollback, escalation."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.config import parse
from ophiura.cluster.decide import decide, fresh_view_hold
from ophiura.cluster.executor import Executor, run_graph
from ophiura.cluster.model import (
    Blocked,
    ClearFailures,
    RestartResource,
    StartHierarchy,
    StopHierarchy,
)
from ophiura.cluster.state import HierarchyState as H
from ophiura.cluster.state import ResourceState as R

from .kit import config_dict, view


class ScriptedAgent:
    """Records every call; behaviour per resource name from `script`."""

    def __init__(self, script: dict[str, dict[str, Any]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[tuple[str, str, float]] = []
        self.running: set[str] = set()
        self.active = 0
        self.max_active = 0

    async def _do(self, action: str, res: Resource) -> Outcome:
        self.calls.append((action, res.name, time.monotonic()))
        s = self.script.get(res.name, {})
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(s.get(f"{action}_delay", 0.01))
        finally:
            self.active -= 1
        fails = s.get(f"{action}_fails", 0)
        if fails:
            s[f"{action}_fails"] = fails - 1
            return Outcome(OcfCode.ERR_GENERIC, 0.01, f"{action} failed")
        if action == "start":
            self.running.add(res.name)
        if action in ("stop", "force_stop"):
            self.running.discard(res.name)
        return Outcome(OcfCode.SUCCESS, 0.01)

    async def start(self, res: Resource, timeout: float) -> Outcome:
        return await self._do("start", res)

    async def stop(self, res: Resource, timeout: float) -> Outcome:
        return await self._do("stop", res)

    async def force_stop(self, res: Resource, timeout: float) -> Outcome:
        return await self._do("force_stop", res)

    async def monitor(self, res: Resource, timeout: float) -> Outcome:
        code = OcfCode.SUCCESS if res.name in self.running else OcfCode.NOT_RUNNING
        return Outcome(code, 0.0)

    async def validate(self, res: Resource, timeout: float) -> Outcome:
        return Outcome(OcfCode.SUCCESS, 0.0)


def make(resources: list[dict[str, Any]], ownable: str | None = None, **h: Any) -> Any:
    spec = {"name": "web", "nodes": ["n1", "n2"], "resources": resources, **h}
    if ownable:
        spec["ownable"] = ownable
    return parse(config_dict(nodes=("n1", "n2"), hierarchies=[spec]))


# vol -> fs -> {app, ip} ; app and ip are independent branches
TREE = [
    {"name": "vol", "kind": "t"},
    {"name": "fs", "kind": "t", "depends_on": ["vol"]},
    {"name": "app", "kind": "t", "depends_on": ["fs"], "monitor_interval": 0.05},
    {"name": "ip", "kind": "t", "depends_on": ["fs"]},
]


async def settle(ex: Executor, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while any(rt.busy() for rt in ex.hier.values()):
        assert time.monotonic() - t0 < timeout, "operation did not finish"
        await asyncio.sleep(0.01)


def setup(
    script: dict[str, dict[str, Any]] | None = None, **kw: Any
) -> tuple[Executor, ScriptedAgent, list[dict[str, Any]]]:
    agent = ScriptedAgent(script)
    events: list[dict[str, Any]] = []
    cfg = make(TREE, **kw)
    ex = Executor(cfg, "n1", lambda kind, **f: events.append({"kind": kind, **f}), lambda k: agent)
    return ex, agent, events


def order(agent: ScriptedAgent, action: str) -> list[str]:
    return [n for a, n, _ in agent.calls if a == action]


async def test_start_bottom_up_stop_top_down_parallel_branches() -> None:
    ex, agent, _ = setup({"app": {"start_delay": 0.1}, "ip": {"start_delay": 0.1}})
    assert ex.submit(StartHierarchy("web", gen=3))
    assert not ex.submit(StopHierarchy("web")), "one operation per hierarchy at a time"
    await settle(ex)
    starts = order(agent, "start")
    assert starts[:2] == ["vol", "fs"] and set(starts[2:]) == {"app", "ip"}
    assert agent.max_active == 2, "app and ip start in parallel"
    rt = ex.hier["web"]
    assert rt.state == H.RUNNING and rt.gen == 3
    ex.submit(StopHierarchy("web"))
    await settle(ex)
    stops = order(agent, "stop")
    assert set(stops[:2]) == {"app", "ip"} and stops[2:] == ["fs", "vol"]
    assert rt.state == H.STOPPED and not agent.running


async def test_ownable_acquired_first_and_released_last() -> None:
    res = [
        {"name": "other", "kind": "t"},
        {"name": "vol", "kind": "t"},
        {"name": "app", "kind": "t", "depends_on": ["vol"]},
    ]
    agent = ScriptedAgent()
    ex = Executor(make(res, ownable="vol"), "n1", lambda *a, **k: None, lambda k: agent)
    ex.submit(StartHierarchy("web", gen=1))
    await settle(ex)
    assert order(agent, "start")[0] == "vol"
    ex.submit(StopHierarchy("web"))
    await settle(ex)
    assert order(agent, "stop")[-1] == "vol"


async def test_start_failure_rolls_back_and_may_retry() -> None:
    ex, agent, _ = setup({"app": {"start_fails": 1}})
    ex.submit(StartHierarchy("web", gen=1))
    await settle(ex)
    rt = ex.hier["web"]
    assert rt.state == H.STOPPED, "rolled back, restart policy allows a retry"
    assert not agent.running and len(rt.failures) == 1
    assert ex.local_view()["web"].failures


async def test_start_failures_exhausted_mark_failed_then_expire() -> None:
    clock = [1000.0]
    agent = ScriptedAgent({"app": {"start_fails": 99}})
    ex = Executor(make(TREE, max_restarts=0, failure_expiry=10), "n1", lambda *a, **k: None,
                  lambda k: agent, clock=lambda: clock[0])  # fmt: skip
    ex.submit(StartHierarchy("web", gen=1))
    await settle(ex)
    assert ex.hier["web"].state == H.FAILED
    clock[0] += 11
    assert ex.local_view()["web"].failures == ()
    ex.submit(ClearFailures("web"))
    assert ex.hier["web"].state == H.STOPPED
    hold = ex.local_view()["web"].hold_until
    assert hold == 1011.0 + fresh_view_hold(ex.cfg.timings), "eligible again: hold starts"


async def test_cleanup_of_failed_hierarchy_holds_starts_until_the_view_is_fresh() -> None:
    """test_live_local::test_local_restart_then_failover: after `cleanup` of a hierarchy FAILED
    here (a peer took it over), the decision must not start it on a view of that peer from
    before the takeover."""
    clock = [1000.0]
    agent = ScriptedAgent({"app": {"start_fails": 99}})
    ex = Executor(make(TREE, max_restarts=0), "n1", lambda *a, **k: None,
                  lambda k: agent, clock=lambda: clock[0])  # fmt: skip
    ex.submit(StartHierarchy("web", gen=1))
    await settle(ex)
    assert ex.hier["web"].state == H.FAILED
    assert ex.cleanup("web")
    local = ex.local_view()
    assert local["web"].state == H.STOPPED and local["web"].failures == ()
    assert local["web"].hold_until == 1000.0 + fresh_view_hold(ex.cfg.timings)
    # The peer that took over is not in our (stale) view yet: no start while the hold lasts.
    v = view(ex.cfg, local=local, now=clock[0] + 0.01)
    assert [type(a) for a in decide(v)] == [Blocked]
    v = view(ex.cfg, local=local, now=local["web"].hold_until)
    assert [type(a) for a in decide(v)] == [StartHierarchy]
    # A cleanup of a hierarchy that was not FAILED here changes no eligibility: no new hold.
    clock[0] += 100
    assert ex.cleanup("web")
    assert ex.local_view()["web"].hold_until == 1000.0 + fresh_view_hold(ex.cfg.timings)


async def test_stop_escalates_to_forced_then_stop_failed() -> None:
    ex, agent, _ = setup({"app": {"stop_fails": 1}})
    ex.submit(StartHierarchy("web", gen=1))
    await settle(ex)
    ex.submit(StopHierarchy("web"))
    await settle(ex)
    assert ex.hier["web"].state == H.STOPPED
    assert order(agent, "force_stop") == ["app"]

    ex2, agent2, events2 = setup({"app": {"stop_fails": 1, "force_stop_fails": 1}})
    ex2.submit(StartHierarchy("web", gen=1))
    await settle(ex2)
    ex2.submit(StopHierarchy("web"))
    await settle(ex2)
    rt = ex2.hier["web"]
    assert rt.state == H.STOP_FAILED and rt.resources["app"] == R.STOP_FAILED
    assert "fs" not in order(agent2, "stop"), "nothing below a resource that would not stop"
    assert "ip" in order(agent2, "stop"), "independent branches still stop"
    why = [e for e in events2 if e.get("task") == "stop-failed"]
    assert why and "fence" in why[0]["desc"]


async def test_monitor_failure_then_local_restart_of_it_and_its_dependents() -> None:
    ex, agent, _ = setup()
    ex.submit(StartHierarchy("web", gen=1))
    await settle(ex)
    agent.running.discard("app")  # the application dies
    t0 = time.monotonic()
    while not ex.local_view()["web"].failed_resources:
        assert time.monotonic() - t0 < 2
        await asyncio.sleep(0.02)
    assert ex.local_view()["web"].failed_resources == ("app",)
    assert ex.fail_counts() == {"web": {"app": 1}}
    agent.calls.clear()
    ex.submit(RestartResource("web", resource="fs"))
    await settle(ex)
    assert set(order(agent, "stop")) == {"app", "ip", "fs"} and order(agent, "stop")[-1] == "fs"
    assert order(agent, "start")[0] == "fs"
    assert ex.hier["web"].state == H.RUNNING and not ex.hier["web"].failed
    await ex.shutdown(stop_resources=True, timeout=5)
    assert not agent.running


async def test_agent_that_raises_is_a_failed_action_not_a_crash() -> None:
    class Broken(ScriptedAgent):
        async def start(self, res: Resource, timeout: float) -> Outcome:
            raise RuntimeError("bug in agent")

    agent = Broken()
    ex = Executor(make(TREE), "n1", lambda *a, **k: None, lambda k: agent)
    ex.submit(StartHierarchy("web", gen=1))
    await settle(ex)
    assert ex.hier["web"].state in (H.STOPPED, H.FAILED)


@pytest.mark.parametrize("stop_on_failure", [True, False])
async def test_run_graph_skips_successors_of_failures(stop_on_failure: bool) -> None:
    deps = {"a": [], "b": ["a"], "c": [], "d": ["c"]}

    async def op(n: str) -> bool:
        await asyncio.sleep(0.01 if n != "c" else 0.05)
        return n != "a"

    ok, bad = await run_graph(deps, lambda n: deps[n], op, stop_on_failure)
    assert bad == {"a"} and "b" not in ok
    assert ok == ({"c"} if stop_on_failure else {"c", "d"})


async def test_node_placeholder_in_params() -> None:
    seen: list[dict[str, str]] = []

    class Recorder(ScriptedAgent):
        async def start(self, res: Resource, timeout: float) -> Outcome:
            seen.append(dict(res.params))
            return await super().start(res, timeout)

    agent = Recorder()
    cfg = make([{"name": "vol", "kind": "t", "params": {"key": "{node}-key", "x": "plain"}}])
    ex = Executor(cfg, "n2", lambda *a, **k: None, lambda k: agent)
    ex.submit(StartHierarchy("web", gen=1))
    await settle(ex)
    assert seen == [{"key": "n2-key", "x": "plain"}]


# -- probing at daemon start, and reload ---------------------------------------------------------


async def test_probe_adopts_what_runs_wholly_and_runs_nothing() -> None:
    ex, agent, events = setup()
    agent.running = {"vol", "fs", "app", "ip"}  # a restarted daemon's services, still up
    await ex.probe()
    rt = ex.hier["web"]
    assert rt.state == H.RUNNING and set(rt.resources.values()) == {R.RUNNING}
    assert agent.calls == []  # no start, no stop (monitor calls are not recorded)
    assert any(e.get("task") == "probe" and "adopted" in e.get("desc", "") for e in events)
    await ex.shutdown(stop_resources=False)
    assert agent.running == {"vol", "fs", "app", "ip"}


async def test_probe_stops_a_partial_hierarchy_unless_left_alone() -> None:
    ex, agent, _ = setup()
    agent.running = {"vol", "fs"}
    await ex.probe(lambda h: True)  # maintenance or frozen: touch nothing
    assert agent.running == {"vol", "fs"} and ex.hier["web"].state == H.STOPPED
    ex, agent, _ = setup()
    agent.running = {"vol", "fs"}
    await ex.probe()
    assert agent.running == set() and order(agent, "stop") == ["fs", "vol"]


class TakenAgent(ScriptedAgent):
    """Another node holds `vol` (its reservation): monitor says so with `taken`."""

    async def monitor(self, res: Resource, timeout: float) -> Outcome:
        if res.name == "vol":
            return Outcome(OcfCode.ERR_GENERIC, 0.0, reason="preempted", taken=True)
        return await super().monitor(res, timeout)


async def test_probe_of_an_ownable_resource_held_elsewhere_is_not_a_failure_here() -> None:
    agent = TakenAgent()
    ex = Executor(make(TREE, ownable="vol"), "n2", lambda *a, **k: None, lambda k: agent)
    await ex.probe()
    assert ex.hier["web"].state == H.STOPPED and order(agent, "stop") == []


async def test_reload_gives_a_running_hierarchy_its_new_spec_without_touching_it() -> None:
    ex, agent, _ = setup()
    agent.running = {"vol", "fs", "app", "ip"}
    await ex.probe()
    new_tree = [dict(r) for r in TREE]
    new_tree[2] = {**new_tree[2], "monitor_interval": 0.02}
    cfg = make(new_tree, failback="auto")
    ex.reload(cfg)
    rt = ex.hier["web"]
    assert rt.state == H.RUNNING and rt.spec.resources["app"].resource.monitor_interval == 0.02
    assert rt.spec.failback == "auto" and order(agent, "start") == order(agent, "stop") == []
    await ex.shutdown(stop_resources=False)


async def test_generation_survives_a_restart(tmp_path: Path) -> None:
    """ophiura torture --mode cluster found it: n2 took a hierarchy over at gen 2 and restarted;
    back at gen 0, the loser's "taken at gen 1" report looked like a takeover by a node nobody
    can see, and every node blocked the hierarchy. The generation is now kept in the state dir."""
    gens = tmp_path / "generations.json"
    agent = ScriptedAgent()
    ex = Executor(make(TREE), "n2", lambda *a, **k: None, lambda k: agent, generations=gens)
    await ex._start(ex.hier["web"], 2, "test")
    assert json.loads(gens.read_text()) == {"web": 2}
    again = Executor(make(TREE), "n2", lambda *a, **k: None, lambda k: agent, generations=gens)
    assert again.local_view()["web"].gen == 2
    gens.write_text("not json")
    assert Executor(make(TREE), "n2", lambda *a, **k: None, generations=gens).hier["web"].gen == 0
