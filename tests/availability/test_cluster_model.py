"""Bottomley §4.5 Eq. 2 and Eq. 3."""

from __future__ import annotations

from fractions import Fraction

import pytest

from ophiura.availability import cluster_availability
from ophiura.availability.cluster_model import ClusterModelError, eq2, eq3

DAY, HOUR = 86400, 3600


def test_eq3_one_node_is_eq2() -> None:
    assert eq3(Fraction(30 * DAY), Fraction(4 * HOUR), Fraction(18), 1) == eq2(
        Fraction(30 * DAY), Fraction(4 * HOUR)
    )


def test_eq3_by_hand() -> None:
    """T_up 30 d, T_down 4 h: A = 180/181; two nodes and an 18 s failover."""
    up, down, rec = Fraction(2_592_000), Fraction(14_400), Fraction(18)
    assert eq2(up, down) == Fraction(180, 181)
    expected = Fraction(2_592_000 * 181, 2_592_000 * 181 + 14_400 + 18 * 180)
    assert eq3(up, down, rec, 2) == expected
    r = cluster_availability(2, up, down, Fraction(16), Fraction(2))
    assert r.t_restore == 18 and r.cluster.value == expected
    assert r.cluster.nines == 4 and r.node.nines == 2


def test_more_nodes_help_until_failover_time_dominates() -> None:
    up, down, rec = Fraction(30 * DAY), Fraction(4 * HOUR), Fraction(18)
    a = [eq3(up, down, rec, n) for n in range(1, 6)]
    assert a == sorted(a)
    # the limit: every failure costs T_recover
    assert a[-1] - up / (up + rec) < Fraction(1, 10**12)


def test_json() -> None:
    j = cluster_availability(2, Fraction(9), Fraction(1), Fraction(0)).to_json()
    assert j["eq3"]["availability"] == pytest.approx(9 / 9.1)
    assert set(j) >= {"nodes", "uptime_s", "downtime_s", "detect_s", "recover_s", "restore_s",
                      "failures_per_year", "downtime_per_failure_s", "node", "eq3"}  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        (0, Fraction(9), Fraction(1), Fraction(0)),
        (2, Fraction(0), Fraction(1), Fraction(0)),
        (2, Fraction(9), Fraction(-1), Fraction(0)),
        (2, Fraction(9), Fraction(1), Fraction(-1)),
    ],
)
def test_bad_input(args: tuple) -> None:
    with pytest.raises(ClusterModelError):
        cluster_availability(*args)
