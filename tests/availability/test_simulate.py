"""The formulas against an event-driven Monte Carlo simulation (seeded, a few seconds in all)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from ophiura.availability.cluster_model import eq3
from ophiura.availability.confidence import mean_interval, t_quantile
from ophiura.availability.simulate import simulate_cluster, simulate_quorum
from ophiura.availability.starfish import eq1

# (rho, Q, N, simulated years with a 4 h SE repair time): ~0.1-0.5 M events each
POINTS = [
    (Fraction(1, 2), 2, 3, 20),
    (Fraction(1, 4), 1, 3, 100),
    (Fraction(1, 10), 2, 4, 300),
    (Fraction(3, 10), 3, 5, 100),
]


@pytest.mark.parametrize(("rho", "q", "n", "years"), POINTS)
def test_eq1_inside_the_simulated_interval(rho: Fraction, q: int, n: int, years: int) -> None:
    sim = simulate_quorum(n, q, rho, years=years, seed=2026, confidence=0.99)
    formula = float(eq1(rho, q, n))
    assert sim.interval.low <= formula <= sim.interval.high, sim.summary()
    assert sim.formula_inside and sim.trustworthy
    # a useful interval, not a wide one that anything would fall into ...
    assert sim.interval.half_width < 0.1 * (1 - formula), sim.summary()
    # ... that tells neighbouring configurations apart
    for q2 in (q - 1, q + 1):
        if 1 <= q2 <= n:
            assert float(eq1(rho, q2, n)) not in sim.interval


def test_seeded_runs_repeat() -> None:
    a = simulate_quorum(3, 2, Fraction(1, 2), years=2, seed=7)
    b = simulate_quorum(3, 2, Fraction(1, 2), years=2, seed=7)
    c = simulate_quorum(3, 2, Fraction(1, 2), years=2, seed=8)
    assert a.interval == b.interval and a.events == b.events
    assert a.interval != c.interval


def test_interval_coverage() -> None:
    """About 95% of 95% intervals hold the true value: 40 short runs, seeds 0..39."""
    rho, q, n = Fraction(1, 2), 2, 3
    truth = float(eq1(rho, q, n))
    hits = sum(
        truth in simulate_quorum(n, q, rho, years=1, replications=10, seed=s).interval
        for s in range(40)
    )
    assert 34 <= hits <= 40, hits


def test_too_few_outages_is_flagged() -> None:
    sim = simulate_quorum(3, 1, Fraction(1, 1000), years=10, seed=1)
    assert not sim.trustworthy and "simulate more years" in sim.warnings()[0]
    assert sim.to_json()["warnings"]


def test_cluster_one_node_exact() -> None:
    """One node: the service needs `recover` of uninterrupted uptime after each repair, so
    A = A_node * exp(-recover / T_up) exactly; Eq. 3 (no failover to make) ignores recover."""
    up, down, rec = 9 * 3600.0, 3600.0, 1800.0
    sim = simulate_cluster(1, up, down, rec, years=100, seed=3, confidence=0.99)
    exact = 0.9 * math.exp(-rec / up)
    assert exact in sim.interval, sim.summary()
    assert sim.interval.half_width < 0.01 * (1 - exact)


def test_cluster_instant_failover_is_any_node_up() -> None:
    """detect = recover = 0: up while any node is up, 1 - (1-A)^N; Eq. 3 is an approximation
    that the simulation tells apart from it."""
    sim = simulate_cluster(3, 3600.0, 3600.0, 0.0, years=5, seed=4, confidence=0.99)
    exact = 1 - 0.5**3
    assert exact in sim.interval, sim.summary()
    approx = float(eq3(Fraction(1), Fraction(1), Fraction(0), 3))  # 0.8
    assert approx not in sim.interval


def test_cluster_eq3_with_a_real_failover_time() -> None:
    """The issue's typical numbers: 30 d up, 4 h repair, 2 s + 16 s failover, two nodes."""
    f = eq3(Fraction(30 * 86400), Fraction(4 * 3600), Fraction(18), 2)
    sim = simulate_cluster(
        2, 30 * 86400.0, 4 * 3600.0, 16.0, 2.0, years=4000, seed=5, confidence=0.99, formula=f
    )
    assert sim.formula_inside, sim.summary()


def test_t_quantiles() -> None:
    """Against the printed tables of Student's t."""
    table = {(0.95, 1): 12.706, (0.95, 9): 2.262, (0.95, 19): 2.093, (0.99, 19): 2.861,
             (0.99, 4): 4.604, (0.95, 120): 1.980}  # fmt: skip
    for (conf, df), t in table.items():
        assert t_quantile(conf, df) == pytest.approx(t, abs=5e-4)
    iv = mean_interval([0.5, 0.7, 0.6], 0.95)
    assert iv.mean == pytest.approx(0.6) and iv.half_width == pytest.approx(4.303 * 0.1 / 3**0.5,
                                                                             rel=1e-3)  # fmt: skip


def test_bad_simulation_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        simulate_quorum(3, 2, Fraction(1), years=1)
    with pytest.raises(ValueError, match="replications"):
        simulate_quorum(3, 2, Fraction(1, 2), years=1, replications=1)
    with pytest.raises(ValueError, match="positive"):
        simulate_quorum(3, 2, Fraction(1, 2), years=0)
