"""Class of nines and downtime budgets: Bottomley §1.1 and the HATS FAQ, exactly."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ophiura.availability.nines import (
    Availability,
    allowed_downtime,
    availability_for_class,
    availability_from_downtime,
    availability_from_failures,
    class_of_nines,
    percent,
    restore_time,
)
from ophiura.availability.units import (
    decimal_str,
    exact,
    format_duration,
    parse_duration,
    parse_instant,
    parse_probability,
)


def test_bottomley_class_examples() -> None:
    assert class_of_nines(exact("0.99987")) == 3
    assert class_of_nines(exact("0.999967")) == 4


def test_nines_are_counted_exactly_at_the_boundary() -> None:
    assert class_of_nines(exact("0.999999")) == 6
    assert class_of_nines(exact("0.9999989999999999999")) == 5
    assert class_of_nines(1 - Fraction(1, 10**20)) == 20
    assert class_of_nines(exact("0.5")) == 0
    assert class_of_nines(Fraction(1)) is None
    # a float is refused: 0.999999 as a float has already lost the digits that decide
    with pytest.raises(TypeError):
        exact(0.999999)  # type: ignore[arg-type]


def test_class_budgets() -> None:
    assert allowed_downtime(3) == Fraction("31536")  # 525.6 min = 8 h 45.6 min
    assert allowed_downtime(3) / 60 == Fraction("525.6")
    assert format_duration(allowed_downtime(3)) == "8 h 45 min 36 s"
    # Bottomley: class 4 "no more than 52 minutes" (52 min 33.6 s), class 5 "5 minutes, 12
    # seconds" -- a 365-day year gives 5 min 15.36 s; see docs/availability.md
    assert format_duration(allowed_downtime(4)) == "52 min 33.6 s"
    assert format_duration(allowed_downtime(5)) == "5 min 15.36 s"
    assert availability_for_class(3) == exact("0.999")
    assert availability_from_downtime(allowed_downtime(4)) == exact("0.9999")


def test_hats_ten_outages_of_18_seconds() -> None:
    """HATS FAQ: 2 s sense + 2 s initiate + 10 s fsck + 4 s start = 18 s; 10 a year."""
    t = restore_time(parse_duration("4s"), parse_duration("14s"))
    assert t == 18
    a = availability_from_failures(Fraction(10), t)
    assert Availability(a).downtime_per_year == 180  # 3 minutes
    assert percent(a, 4) == "99.9994%"
    assert percent(a) == "99.999429%"
    assert class_of_nines(a) == 5


def test_percent_truncates() -> None:
    assert percent(exact("0.9999996")) == "99.99996%"
    assert percent(exact("0.9999996"), 4) == "99.9999%"  # never rounded up to 100%
    assert f"{float(exact('0.9999996')) * 100:.4f}%" == "100.0000%"  # what rounding would say
    assert percent(exact("0.99987")) == "99.987%"
    assert percent(exact("0.999999")) == "99.9999%"
    assert percent(exact("0.7407")) == "74.07%"
    assert percent(Fraction(1)) == "100%"


def test_parsers() -> None:
    assert parse_probability("99.9%") == exact("0.999")
    assert parse_probability("0.99") == Fraction(99, 100)
    assert parse_duration("1h30m") == 5400
    assert parse_duration("525.6min") == 31536
    assert parse_duration("250ms") == Fraction(1, 4)
    assert parse_duration("18") == 18
    assert parse_instant("2023-11-15T00:00:00Z", 0) == 1_700_006_400
    assert parse_instant("2023-11-15 00:00", 0) == 1_700_006_400  # no zone: UTC
    assert parse_instant("7d", 1_000_000) == 1_000_000 - 7 * 86400
    assert parse_instant("@1700000000.5", 0) == 1_700_000_000.5
    assert decimal_str(Fraction(99, 100)) == "0.99"
    assert decimal_str(Fraction(1, 3)) == "1/3"


@pytest.mark.parametrize("bad", ["1", "0", "1.2", "-0.1", "100%", "abc", ""])
def test_bad_probability(bad: str) -> None:
    with pytest.raises(ValueError, match=r"outside|not a number"):
        parse_probability(bad)


@pytest.mark.parametrize("bad", ["h", "4x", "-3s", "1h-2m", ""])
def test_bad_duration(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_bad_downtime() -> None:
    with pytest.raises(ValueError, match="outside"):
        availability_from_downtime(Fraction(366 * 86400))


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(0, 40),
    first=st.sampled_from("012345678"),
    rest=st.text(alphabet="0123456789", max_size=30),
)
def test_class_is_the_count_of_leading_nines(k: int, first: str, rest: str) -> None:
    """The definition itself: the leading nines of the decimal as written."""
    assert class_of_nines(exact("0." + "9" * k + first + rest)) == k
