"""StarFish §4: Eq. 1, Eq. 2, the paper's claims and its Tables 1 and 2, reproduced."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest

from ophiura.availability import starfish_availability
from ophiura.availability.starfish import (
    TABLE2_RHO_HE,
    Reliability,
    eq1,
    eq2,
    read_only_gain_bound,
    rho_from_availability,
    table,
)
from ophiura.availability.units import exact

SE = [exact(a) for a in ("0.9", "0.99", "0.999", "0.9999")]

# Table 1 of the paper, columns Q=1: N=2,3,4; Q=2: N=3,4,5; Q=3: N=3,5,6,7. The seed's text of
# this table is scrambled by PDF extraction; these are our values, and each row is checked
# below against the multiset of "k * 9" entries the seed's text does contain for that row.
TABLE1_COLUMNS = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (2, 5), (3, 3), (3, 5), (3, 6), (3, 7)]
TABLE1 = [
    [2, 3, 4, 1, 2, 3, 0, 2, 3, 3],
    [4, 6, 8, 3, 5, 7, 1, 5, 6, 8],
    [6, 9, 12, 5, 8, 11, 2, 8, 10, 13],
    [8, 12, 16, 7, 11, 15, 3, 11, 14, 18],
]
# The seed's Table 1 entries per row, in the order the extraction left them.
TABLE1_SEED_TOKENS = [
    [2, 3, 2, 3, 2, 3, 3, 4, 1, 0],
    [5, 4, 6, 8, 3, 7, 1, 5, 6, 8],
    [6, 9, 12, 5, 8, 11, 2, 8, 10, 13],
    [11, 15, 3, 7, 8, 12, 16, 11, 14, 18],
]
# Table 2 (read-only consistency), legible in the seed: Q=1: N=2,3,4; Q=2 and Q=3: N=3,4,5.
TABLE2_COLUMNS = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (2, 5), (3, 3), (3, 4), (3, 5)]
TABLE2 = [
    [2, 3, 4, 3, 4, 5, 3, 4, 5],
    [4, 5, 6, 6, 7, 8, 6, 8, 9],
    [5, 6, 7, 8, 9, 10, 9, 11, 12],
    [7, 8, 8, 11, 12, 12, 12, 15, 16],
]


def test_table1_reproduced() -> None:
    t = table(SE, TABLE1_COLUMNS, convention="paper")
    assert t.nines() == TABLE1
    for ours, seed in zip(TABLE1, TABLE1_SEED_TOKENS, strict=True):
        assert Counter(ours) == Counter(seed)
    assert [r.to_json()["se_nines"] for r in t.rows] == [1, 2, 3, 4]


def test_table1_needs_the_papers_load_conversion() -> None:
    """rho = (1-A)/A (exact for one SE, the default) misses one cell: 90% SEs, Q=3, N=6 gives
    2, not 3."""
    t = table(SE, TABLE1_COLUMNS)
    assert t.convention == "exact"
    diff = [
        (r, c) for r, row in enumerate(t.nines()) for c, v in enumerate(row) if v != TABLE1[r][c]
    ]
    assert diff == [(0, 8)] and t.nines()[0][8] == 2


def test_table2_reproduced() -> None:
    """Every cell with the HE at 99.99% (rho_he = 1e-4)."""
    t = table(SE, TABLE2_COLUMNS, he_availability=exact("0.9999"), convention="paper")
    assert t.rho_he == TABLE2_RHO_HE
    assert t.nines() == TABLE2


def test_table2_needs_the_papers_load_conversion() -> None:
    """With the model's own load (SE and HE availability both converted) 20 of the 36 cells
    come out one nine lower (docs/availability.md)."""
    t = table(SE, TABLE2_COLUMNS, he_availability=exact("0.9999")).nines()
    diff = [t[r][c] - TABLE2[r][c] for r in range(len(SE)) for c in range(len(TABLE2_COLUMNS))]
    assert diff.count(-1) == 20 and set(diff) == {0, -1}


def test_table2_is_sensitive_to_the_he_load() -> None:
    assert table(SE, TABLE2_COLUMNS, rho_he=Fraction(1, 1000)).nines() != TABLE2
    assert table(SE, TABLE2_COLUMNS, rho_he=Fraction(1, 100_000)).nines() != TABLE2


def test_paper_claims() -> None:
    # "if the SEs are at least 99% available, StarFish with Q=1 and 3 SEs is 99.9999% (6*9)"
    r = starfish_availability("0.99", n=3, q=1, convention="paper")
    assert r.write.nines == 6
    assert starfish_availability("0.99", n=3, q=1, convention="exact").write.nines == 6
    # "for Q=N=3, StarFish is less available than a single SE"
    r = starfish_availability("0.99", n=3, q=3)
    assert r.write.value < exact("0.99") and r.write.value < r.single_se.value
    # "N=3 and Q=2 ... with SE availability of 99% and read-only consistency is 6*9"
    r = starfish_availability("0.99", n=3, q=2, he_availability="0.9999", convention="paper")
    assert r.read_only is not None and r.read_only.nines == 6
    # availability decreases with Q for fixed N, increases with N for fixed Q (Figure 3)
    rho = Fraction(1, 10)
    assert eq1(rho, 1, 5) > eq1(rho, 2, 5) > eq1(rho, 3, 5)
    assert all(eq1(rho, 1, n) < eq1(rho, 1, n + 1) for n in range(1, 6))


def test_default_load_is_the_models_own() -> None:
    """By default an SE of availability A has rho = (1-A)/A, so Eq. 1 for one SE gives A back
    (issue 12: "one SE: 95%" and Eq. 1 agree); the paper's rho = 1-A does not."""
    for a in (exact("0.95"), *SE):
        r = starfish_availability(a, n=1, q=1)
        assert r.convention == "exact" and r.rho == (1 - a) / a
        assert r.write.value == r.single_se.value == a
        paper = starfish_availability(a, n=1, q=1, convention="paper")
        assert paper.rho == 1 - a and paper.write.value == 1 / (2 - a) != a


def test_eq1_closed_forms() -> None:
    rho = Fraction(1, 3)
    p = rho / (1 + rho)  # one SE down
    assert eq1(rho, 1, 1) == 1 / (1 + rho)
    assert eq1(rho, 1, 3) == 1 - p**3
    assert eq1(rho, 3, 3) == (1 - p) ** 3
    assert eq1(rho, 2, 3) == (1 - p) ** 3 + 3 * p * (1 - p) ** 2


def test_eq2_properties() -> None:
    rho = Fraction(1, 5)
    # HE never fails: independent of Q (the HE can always recover the SEs)
    assert eq2(rho, Fraction(0), 1, 3) == eq2(rho, Fraction(0), 3, 3) == eq1(rho, 1, 3)
    # Q = N: every SE holds every write, so it equals at least one SE up
    assert eq2(rho, Fraction(1, 2), 3, 3) == eq1(rho, 1, 3)
    # the HE less available: larger Q helps
    assert eq2(rho, Fraction(1, 2), 1, 3) < eq2(rho, Fraction(1, 2), 2, 3)


def test_read_only_gain_bound() -> None:
    """The gain of Q=2 over Q=1 at rho -> 1 approaches rho_he / (4 (1 + rho_he)); the paper's
    3/16 is that bound at rho_he = 3."""
    for rho_he in (Fraction(1, 10), Fraction(1), Fraction(3)):
        near_one = Fraction(999_999, 1_000_000)
        gain = eq2(near_one, rho_he, 2, 3) - eq2(near_one, rho_he, 1, 3)
        assert gain < read_only_gain_bound(rho_he)
        assert read_only_gain_bound(rho_he) - gain < Fraction(1, 10**6)
    assert read_only_gain_bound(Fraction(3)) == Fraction(3, 16)


def test_reliability_notes() -> None:
    assert Reliability(3, 1).can_lose_data and Reliability(3, 1).loss_bound == Fraction(1, 4)
    assert Reliability(4, 2).can_lose_data and Reliability(4, 2).loss_bound == Fraction(1, 16)
    assert not Reliability(3, 2).can_lose_data and Reliability(3, 2).loss_bound is None
    assert any("less available than one SE" in n for n in Reliability(3, 3).notes())
    j = starfish_availability("0.99", n=3, q=1).to_json()
    assert j["reliability"]["can_lose_data"] and j["reliability"]["loss_probability_bound"] == 0.25


def test_json_keys() -> None:
    j = starfish_availability("0.99", n=3, q=2, he_availability="0.999").to_json()
    assert set(j) == {"n", "q", "rho", "rho_exact", "load_convention", "se_availability",
                      "single_se", "eq1", "reliability", "read_only"}  # fmt: skip
    assert set(j["eq1"]) == {"availability", "unavailability", "nines", "percent",
                             "downtime_per_year_s", "exact"}  # fmt: skip
    assert j["se_availability"] == "0.99" and j["rho_exact"] == "1/99"
    assert j["load_convention"] == "exact"
    assert j["read_only"]["he_availability"] == "0.999"
    p = Fraction(1, 100)  # one SE down: rho / (1 + rho) = 1 - A
    assert j["eq1"]["nines"] == 3
    assert j["eq1"]["unavailability"] == float(3 * p**2 * (1 - p) + p**3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": "1"}, "outside \\(0, 1\\)"),
        ({"rho": "1.5"}, "outside \\(0, 1\\)"),
        ({"rho": "0"}, "outside \\(0, 1\\)"),
        ({"se_availability": "0.99", "q": 4}, "1 <= Q <= N"),
        ({"se_availability": "0.99", "q": 0}, "1 <= Q <= N"),
        ({"se_availability": "1.0"}, "outside \\(0, 1\\)"),
        ({"se_availability": "0.99", "rho": "0.1"}, "exactly one"),
    ],
)
def test_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        starfish_availability(**{"n": 3, "q": 2, **kwargs})


def test_rho_conventions() -> None:
    assert rho_from_availability(exact("0.99")) == Fraction(1, 99)
    assert rho_from_availability(exact("0.99"), "exact") == Fraction(1, 99)
    assert rho_from_availability(exact("0.99"), "paper") == Fraction(1, 100)
