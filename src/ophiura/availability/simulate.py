"""Event-driven Monte Carlo checks of the formulas (StarFish validated Eq. 1 the same way).

Each component (SE or node) is an alternating renewal process with exponential up and down
times, as the paper assumes, drawn from `random.Random(seed)`; a heap orders the next event of
every component. Components start in their stationary state (up with probability 1/(1+rho)),
which with exponential times makes the SE process stationary from t = 0, so no warm-up is
needed there. The confidence interval comes from independent replications (separate seeded
streams) and Student's t: the replications are i.i.d., unlike batches of one run.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ophiura.availability.confidence import Interval, mean_interval
from ophiura.availability.nines import class_of_nines, percent
from ophiura.availability.units import YEAR_S

DEFAULT_SE_MTTR_S = 4 * 3600  # HATS FAQ: "typically downtime is an average of 4 hours"
MIN_OUTAGES = 30  # fewer system outages than this: the interval is not to be trusted


@dataclass(frozen=True)
class SimResult:
    """Simulated availability with its interval, next to the formula it checks."""

    model: str
    interval: Interval
    replications: int
    years: float
    seed: int
    outages: int
    events: int
    mean_outage_s: float | None
    wall_s: float
    formula: Fraction | None
    formula_name: str

    @property
    def formula_inside(self) -> bool | None:
        return None if self.formula is None else float(self.formula) in self.interval

    @property
    def trustworthy(self) -> bool:
        return self.outages >= MIN_OUTAGES

    def warnings(self) -> list[str]:
        if self.trustworthy:
            return []
        return [
            f"only {self.outages} outage(s) simulated: the interval is not reliable; "
            "simulate more years (--years)"
        ]

    def to_json(self) -> dict[str, Any]:
        iv = self.interval
        mean = Fraction(iv.mean).limit_denominator(10**15) if 0 <= iv.mean <= 1 else None
        return {
            "model": self.model,
            "method": "independent replications, Student t interval",
            "replications": self.replications,
            "years": self.years,
            "seed": self.seed,
            "confidence": iv.confidence,
            "availability": iv.mean,
            "unavailability": 1 - iv.mean,
            "ci_low": iv.low,
            "ci_high": iv.high,
            "half_width": iv.half_width,
            "nines": None if mean is None else class_of_nines(mean),
            "outages": self.outages,
            "mean_outage_s": self.mean_outage_s,
            "events": self.events,
            "wall_s": round(self.wall_s, 3),
            "formula": self.formula_name,
            "formula_availability": None if self.formula is None else float(self.formula),
            "formula_inside_ci": self.formula_inside,
            "warnings": self.warnings(),
        }

    def summary(self) -> str:
        iv = self.interval
        head = (
            f"simulated {self.years:g} years ({self.replications} replications, seed "
            f"{self.seed}): availability {iv.mean:.10f}, {iv.confidence:.0%} CI "
            f"[{iv.low:.10f}, {iv.high:.10f}], {self.outages} outages, {self.events} events"
        )
        if self.formula is not None:
            verdict = "inside" if self.formula_inside else "OUTSIDE"
            head += f"; {self.formula_name} {percent(self.formula)} is {verdict} the interval"
        return head


def _streams(seed: int, count: int) -> list[random.Random]:
    master = random.Random(seed)
    return [random.Random(master.getrandbits(64)) for _ in range(count)]


def _replicate(
    run: Callable[[random.Random], tuple[float, int, int, float]],
    *,
    model: str,
    years: float,
    replications: int,
    seed: int,
    confidence: float,
    formula: Fraction | None,
    formula_name: str,
) -> SimResult:
    """`run` (one replication: availability, outages, events, down time) once per seeded
    stream, pooled into one result with its interval."""
    t0 = time.perf_counter()
    samples, outages, events, down = [], 0, 0, 0.0
    for rng in _streams(seed, replications):
        a, o, e, d = run(rng)
        samples.append(a)
        outages += o
        events += e
        down += d
    return SimResult(
        model=model,
        interval=mean_interval(samples, confidence),
        replications=replications,
        years=years,
        seed=seed,
        outages=outages,
        events=events,
        mean_outage_s=down / outages if outages else None,
        wall_s=time.perf_counter() - t0,
        formula=formula,
        formula_name=formula_name,
    )


def _quorum_run(
    rng: random.Random, n: int, q: int, lam: float, mu: float, horizon: float
) -> tuple[float, int, int, float]:
    """One replication: (fraction of time >= q SEs up, outages, events, down time)."""
    expo = rng.expovariate
    p_up = mu / (lam + mu)
    up = [rng.random() < p_up for _ in range(n)]
    heap = [(expo(lam if u else mu), i) for i, u in enumerate(up)]
    heapq.heapify(heap)
    n_up = sum(up)
    sys_up = n_up >= q
    t = up_time = 0.0
    outages = events = 0
    while True:
        te, i = heap[0]
        if te >= horizon:
            break
        if sys_up:
            up_time += te - t
        t = te
        if up[i]:
            up[i] = False
            n_up -= 1
            heapq.heapreplace(heap, (t + expo(mu), i))
        else:
            up[i] = True
            n_up += 1
            heapq.heapreplace(heap, (t + expo(lam), i))
        events += 1
        now_up = n_up >= q
        if sys_up and not now_up:
            outages += 1
        sys_up = now_up
    if sys_up:
        up_time += horizon - t
    return up_time / horizon, outages, events, horizon - up_time


def simulate_quorum(
    n: int,
    q: int,
    rho: Fraction | float,
    *,
    years: float = 1000.0,
    se_mttr_s: float = DEFAULT_SE_MTTR_S,
    replications: int = 20,
    seed: int = 0,
    confidence: float = 0.95,
) -> SimResult:
    """N SEs failing at rate lambda = rho * mu and repaired at mu = 1/MTTR, each independently;
    the system is up while at least Q are up. Compared with Eq. 1 at the same rho."""
    from ophiura.availability.starfish import _check, eq1

    rho_f = Fraction(rho) if not isinstance(rho, float) else Fraction(str(rho))
    _check(rho_f, q, n)
    _check_run(years, replications, se_mttr_s)
    mu = 1.0 / se_mttr_s
    lam = float(rho_f) * mu
    horizon = years * YEAR_S / replications
    return _replicate(
        lambda rng: _quorum_run(rng, n, q, lam, mu, horizon),
        model=f"quorum N={n} Q={q} rho={float(rho_f):g}",
        years=years,
        replications=replications,
        seed=seed,
        confidence=confidence,
        formula=eq1(rho_f, q, n),
        formula_name="Eq. 1",
    )


def _cluster_run(
    rng: random.Random,
    nodes: int,
    t_up: float,
    t_down: float,
    detect: float,
    recover: float,
    horizon: float,
    warmup: float,
) -> tuple[float, int, int, float]:
    """One replication of a failover cluster running one service (no automatic failback).

    The service's node fails: it is restarted on another up node after detect + recover; if
    that node fails first, on the next one; with no node up it waits for the first repair and
    then needs `recover`. Only [warmup, warmup + horizon] is counted.
    """
    expo = rng.expovariate
    lam, mu = 1.0 / t_up, (1.0 / t_down if t_down > 0 else float("inf"))
    p_up = t_up / (t_up + t_down)
    up = [rng.random() < p_up for _ in range(nodes)]

    def draw(is_up: bool) -> float:
        if is_up:
            return expo(lam)
        return expo(mu) if t_down > 0 else 0.0

    heap = [(draw(u), i) for i, u in enumerate(up)]
    heapq.heapify(heap)
    end = warmup + horizon
    on = next((i for i, u in enumerate(up) if u), None)
    running = on is not None
    ready_at = float("inf")  # when a start in progress completes
    t = 0.0
    up_time = 0.0
    outages = events = 0

    def count(t_from: float, t_to: float) -> float:
        lo, hi = max(t_from, warmup), min(t_to, end)
        return hi - lo if hi > lo else 0.0

    while True:
        te, i = heap[0]
        nxt = min(te, ready_at)
        if nxt >= end:
            break
        if running:
            up_time += count(t, nxt)
        t = nxt
        if ready_at <= te:  # a start completes
            ready_at = float("inf")
            running = True
            continue
        events += 1
        if up[i]:
            up[i] = False
            heapq.heapreplace(heap, (t + draw(False), i))
            if on == i:
                if running and t >= warmup:
                    outages += 1
                running = False
                on = next((k for k in range(nodes) if up[k]), None)
                ready_at = t + detect + recover if on is not None else float("inf")
        else:
            up[i] = True
            heapq.heapreplace(heap, (t + draw(True), i))
            if on is None:  # waiting for any node: start here
                on = i
                ready_at = t + recover
    if running:
        up_time += count(t, end)
    return up_time / horizon, outages, events, horizon - up_time


def simulate_cluster(
    nodes: int,
    uptime_s: float,
    downtime_s: float,
    recover_s: float,
    detect_s: float = 0.0,
    *,
    years: float = 1000.0,
    replications: int = 20,
    seed: int = 0,
    confidence: float = 0.95,
    formula: Fraction | None = None,
) -> SimResult:
    """N nodes with exponential up (mean `uptime_s`) and repair (mean `downtime_s`) times, one
    service failed over in detect + recover seconds; compared with Eq. 3 (`formula`)."""
    if nodes < 1:
        raise ValueError(f"{nodes} nodes: a cluster needs at least one")
    if uptime_s <= 0 or downtime_s < 0 or recover_s < 0 or detect_s < 0:
        raise ValueError("uptime must be > 0; downtime, detect and recover >= 0")
    _check_run(years, replications, 1.0)
    horizon = years * YEAR_S / replications
    warmup = 10 * (uptime_s + downtime_s)
    return _replicate(
        lambda rng: _cluster_run(
            rng, nodes, uptime_s, downtime_s, detect_s, recover_s, horizon, warmup
        ),
        model=f"cluster nodes={nodes}",
        years=years,
        replications=replications,
        seed=seed,
        confidence=confidence,
        formula=formula,
        formula_name="Eq. 3",
    )


def _check_run(years: float, replications: int, mttr: float) -> None:
    if not years > 0:
        raise ValueError(f"--years {years}: simulate a positive time")
    if replications < 2:
        raise ValueError(f"{replications} replications: need at least 2 for an interval")
    if not mttr > 0:
        raise ValueError("mean time to repair must be > 0")
