"""The class of nines (Bottomley §1.1) and downtime per year, counted exactly.

"0.99987 is class 3": the number of leading nines of the decimal. Counting them on a float goes
wrong exactly where it matters (1 - 1e-6 is not representable, and 0.999999 as a float may come
out as 5), so everything here is a `Fraction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ophiura.availability.units import YEAR_S, format_duration


def class_of_nines(a: Fraction) -> int | None:
    """Leading nines of `a` in [0, 1]; None for exactly 1 (no downtime: unbounded class)."""
    if not 0 <= a <= 1:
        raise ValueError(f"availability {a} is outside [0, 1]")
    if a == 1:
        return None
    k = 0
    while a >= 1 - Fraction(1, 10 ** (k + 1)):
        k += 1
    return k


def availability_for_class(k: int) -> Fraction:
    """The least availability of class k: 1 - 10^-k."""
    if k < 0:
        raise ValueError(f"class of nines {k} is negative")
    return 1 - Fraction(1, 10**k)


def allowed_downtime(k: int) -> Fraction:
    """Seconds of downtime per year that class k allows (class 3: 31,536 s = 8 h 45.6 min)."""
    return (1 - availability_for_class(k)) * YEAR_S


def downtime_per_year(a: Fraction) -> Fraction:
    """Seconds per (365-day) year an availability `a` is down."""
    return (1 - a) * YEAR_S


def availability_from_downtime(seconds_per_year: Fraction) -> Fraction:
    """The reverse of `downtime_per_year`."""
    if not 0 <= seconds_per_year <= YEAR_S:
        raise ValueError(
            f"downtime of {format_duration(seconds_per_year)} a year is outside 0 .. 1 year"
        )
    return 1 - seconds_per_year / YEAR_S


def restore_time(detect: Fraction, recover: Fraction) -> Fraction:
    """Bottomley Eq. 1: T_restore = T_detect + T_recover."""
    return detect + recover


def availability_from_failures(failures_per_year: Fraction, t_restore: Fraction) -> Fraction:
    """HATS FAQ: downtime = failures per year x time to restore (10 x 18 s -> 99.9994%)."""
    if failures_per_year < 0:
        raise ValueError(f"failures per year {failures_per_year} is negative")
    return availability_from_downtime(failures_per_year * t_restore)


def percent(a: Fraction, places: int | None = None) -> str:
    """`a` as a percentage, *truncated* (rounding 99.99996% up to 100% would claim no downtime).

    By default one digit past the leading nines, trailing zeros dropped: 0.99987 -> 99.987%,
    0.999999 -> 99.9999%.
    """
    if places is None:
        k = class_of_nines(a)
        if k is None:
            return "100%"
        places = max(k + 1, 2)
    scaled = a * 100 * 10**places
    whole = scaled.numerator // scaled.denominator
    text = f"{whole // 10**places}.{whole % 10**places:0{places}d}" if places else str(whole)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


@dataclass(frozen=True)
class Availability:
    """One availability figure and everything a person reads from it."""

    value: Fraction

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 1:
            raise ValueError(f"availability {self.value} is outside [0, 1]")

    @property
    def nines(self) -> int | None:
        return class_of_nines(self.value)

    @property
    def unavailability(self) -> Fraction:
        return 1 - self.value

    @property
    def downtime_per_year(self) -> Fraction:
        return downtime_per_year(self.value)

    def to_json(self) -> dict[str, Any]:
        """Floats for plotting, plus the exact figures (`unavailability` keeps its digits where
        `1 - availability` as floats would not)."""
        return {
            "availability": float(self.value),
            "unavailability": float(self.unavailability),
            "nines": self.nines,
            "percent": percent(self.value),
            "downtime_per_year_s": float(self.downtime_per_year),
            "exact": str(self.value) if len(str(self.value)) <= 200 else None,
        }


def nines_summary(a: Fraction) -> dict[str, Any]:
    """`ophiura avail --nines A`: the class, its budget, and how much of it `a` uses."""
    fig = Availability(a)
    k = fig.nines
    out: dict[str, Any] = {**fig.to_json(), "class": k}
    if k is not None:
        out["class_allows_downtime_per_year_s"] = float(allowed_downtime(k))
        out["next_class"] = k + 1
        out["next_class_allows_downtime_per_year_s"] = float(allowed_downtime(k + 1))
    return out
