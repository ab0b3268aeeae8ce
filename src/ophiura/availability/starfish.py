"""StarFish §4: availability of N storage elements with write quorum Q (Eq. 1), with read-only
consistency (Eq. 2), and the reliability notes of §4.2.

The load rho = lambda/mu is what the formulas take; operators know SE availability. The model's
own single SE is available A(1, 1) = 1/(1 + rho), so an SE of availability A has the load
rho = (1 - A)/A ("exact", the default): then "one SE: 99%" and Eq. 1 with N = Q = 1 in the same
result agree. The paper converts with rho = 1 - A ("rho from 0.1 to 0.001 correspond to hardware
availability of 90% to 99.9%"), and only that conversion reproduces its Tables 1 and 2 exactly
(the exact one differs in one cell of Table 1), so "paper" stays one argument away
(`--paper-load`); every result says which it used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from math import comb
from typing import Any, Literal

from ophiura.availability.nines import Availability
from ophiura.availability.units import decimal_str

Convention = Literal["paper", "exact"]
CONVENTIONS: tuple[Convention, ...] = ("paper", "exact")
# Table 2 of the paper: its "typical" HE availability. rho_he = 1e-4 (HE available 99.99%) is the
# one value that reproduces every cell (found by search, checked in the tests).
TABLE2_RHO_HE = Fraction(1, 10_000)


class ModelError(ValueError):
    """Parameters outside the model's domain (rho outside (0, 1), Q > N, ...)."""


def _dec(value: Fraction | None) -> str | None:
    return None if value is None else decimal_str(value)


def rho_from_availability(a: Fraction, convention: Convention = "exact") -> Fraction:
    """The load rho of a component with availability `a`."""
    if not 0 < a < 1:
        raise ModelError(f"availability {a} is outside (0, 1)")
    if convention == "paper":
        return 1 - a
    if convention == "exact":
        return (1 - a) / a
    raise ModelError(f"unknown load convention {convention!r} (paper or exact)")


def availability_from_rho(rho: Fraction, convention: Convention = "exact") -> Fraction:
    """The inverse of `rho_from_availability`."""
    return 1 - rho if convention == "paper" else 1 / (1 + rho)


def _check(rho: Fraction, q: int, n: int, what: str = "rho") -> None:
    if not 0 < rho < 1:
        raise ModelError(
            f"{what} = {float(rho):g} is outside (0, 1): Eq. 1 holds only while failures are "
            "slower than repairs (lambda < mu)"
        )
    if n < 1:
        raise ModelError(f"N = {n}: need at least one storage element")
    if not 1 <= q <= n:
        raise ModelError(f"Q = {q} with N = {n}: the write quorum must be 1 <= Q <= N")


def eq1(rho: Fraction, q: int, n: int) -> Fraction:
    """Eq. 1: A(Q, N) = sum_{i=0}^{N-Q} C(N, i) rho^i / (1 + rho)^N — at least Q SEs up."""
    _check(rho, q, n)
    return sum((comb(n, i) * rho**i for i in range(n - q + 1)), Fraction(0)) / (1 + rho) ** n


def eq2(rho: Fraction, rho_he: Fraction, q: int, n: int) -> Fraction:
    """Eq. 2: read-only consistency. The HE and any one SE up, or the HE down (a standby HE takes
    over) and one of the Q SEs that hold every acknowledged write up."""
    _check(rho, q, n)
    if rho_he < 0:
        raise ModelError(f"rho_he = {float(rho_he):g} is negative")
    first = sum((comb(n, i) * rho**i for i in range(n)), Fraction(0))
    first /= (1 + rho_he) * (1 + rho) ** n
    second = rho_he * sum((comb(q, i) * rho**i for i in range(q)), Fraction(0))
    second /= (1 + rho_he) * (1 + rho) ** q
    return first + second


def read_only_gain_bound(rho_he: Fraction) -> Fraction:
    """What Q = 2 adds over Q = 1 under Eq. 2 is rho_he/(1+rho_he) * p(1-p), p = rho/(1+rho);
    its largest value (at rho = 1) is rho_he / (4 (1 + rho_he)). The paper quotes 3/16, which is
    this bound at rho_he = 3."""
    return rho_he / (4 * (1 + rho_he))


@dataclass(frozen=True)
class Reliability:
    """§4.2: whether a configuration can lose acknowledged data, and the paper's bound."""

    n: int
    q: int

    @property
    def majority(self) -> bool:
        return self.q > self.n // 2

    @property
    def can_lose_data(self) -> bool:
        """Q <= floor(N/2): the HE and the Q SEs with the latest writes can all fail."""
        return not self.majority

    @property
    def loss_bound(self) -> Fraction | None:
        """Probability of data loss is at most 1/4^Q (at rho = 1, rho_he = 0), when possible."""
        return Fraction(1, 4**self.q) if self.can_lose_data else None

    def notes(self) -> list[str]:
        out = []
        if self.can_lose_data:
            out.append(
                f"Q={self.q} <= floor(N/2)={self.n // 2}: data acknowledged to the host can be "
                f"lost if the HE and the {self.q} SE(s) holding the latest writes fail; the "
                f"probability of loss is bounded by 1/4^Q = 1/{4**self.q} (StarFish §4.2)"
            )
        else:
            out.append(
                f"Q={self.q} > floor(N/2)={self.n // 2}: no acknowledged write is lost while "
                f"at least Q SEs survive"
            )
        if self.q == self.n and self.n > 1:
            out.append("Q = N: every SE must be up to write; less available than one SE")
        if self.majority and 2 * self.q - 1 != self.n:
            out.append(f"N = 2Q - 1 = {2 * self.q - 1} gives the same safety with fewer SEs")
        return out

    def to_json(self) -> dict[str, Any]:
        bound = self.loss_bound
        return {
            "majority_quorum": self.majority,
            "can_lose_data": self.can_lose_data,
            "loss_probability_bound": None if bound is None else float(bound),
            "notes": self.notes(),
        }


@dataclass(frozen=True)
class StarfishResult:
    """Eq. 1 (and Eq. 2 when an HE load is given) for one configuration."""

    n: int
    q: int
    rho: Fraction
    convention: Convention
    se_availability: Fraction | None
    write: Availability
    read_only: Availability | None = None
    rho_he: Fraction | None = None
    he_availability: Fraction | None = None
    reliability: Reliability = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reliability", Reliability(self.n, self.q))

    @property
    def single_se(self) -> Availability:
        """One SE: as given, or Eq. 1's own A(1, 1) = 1/(1 + rho) when only rho was."""
        if self.se_availability is not None:
            return Availability(self.se_availability)
        return Availability(eq1(self.rho, 1, 1))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.n,
            "q": self.q,
            "rho": float(self.rho),
            "rho_exact": decimal_str(self.rho),
            "load_convention": self.convention,
            "se_availability": _dec(self.se_availability),
            "single_se": self.single_se.to_json(),
            "eq1": self.write.to_json(),
            "reliability": self.reliability.to_json(),
            "read_only": None,
        }
        if self.read_only is not None and self.rho_he is not None:
            out["read_only"] = {
                "rho_he": float(self.rho_he),
                "he_availability": _dec(self.he_availability),
                "eq2": self.read_only.to_json(),
            }
        return out


def starfish_availability(
    se_availability: Fraction | str | None = None,
    n: int = 3,
    q: int = 2,
    *,
    rho: Fraction | str | None = None,
    he_availability: Fraction | str | None = None,
    rho_he: Fraction | str | None = None,
    convention: Convention = "exact",
) -> StarfishResult:
    """Eq. 1 for N SEs of availability `se_availability` (or load `rho`) with quorum Q; Eq. 2
    too when `he_availability` or `rho_he` is given. Strings are parsed exactly ("0.99")."""
    from ophiura.availability.units import exact, parse_probability

    if (se_availability is None) == (rho is None):
        raise ModelError("give exactly one of se_availability and rho")
    a_se = None
    if se_availability is not None:
        a_se = parse_probability(se_availability, "SE availability")
        r = rho_from_availability(a_se, convention)
    else:
        r = exact(rho)  # type: ignore[arg-type]
    write = Availability(eq1(r, q, n))
    a_he = r_he = None
    read_only = None
    if he_availability is not None or rho_he is not None:
        if he_availability is not None and rho_he is not None:
            raise ModelError("give he_availability or rho_he, not both")
        if he_availability is not None:
            a_he = parse_probability(he_availability, "HE availability")
            r_he = rho_from_availability(a_he, convention)
        else:
            r_he = exact(rho_he)  # type: ignore[arg-type]
            if not 0 <= r_he < 1:
                raise ModelError(f"rho_he = {float(r_he):g} is outside [0, 1)")
        read_only = Availability(eq2(r, r_he, q, n))
    return StarfishResult(n, q, r, convention, a_se, write, read_only, r_he, a_he)


@dataclass(frozen=True)
class TableCell:
    q: int
    n: int
    availability: Availability

    def to_json(self) -> dict[str, Any]:
        return {"q": self.q, "n": self.n, **self.availability.to_json()}


@dataclass(frozen=True)
class TableRow:
    se_availability: Fraction
    rho: Fraction
    cells: tuple[TableCell, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "se_availability": decimal_str(self.se_availability),
            "se_nines": Availability(self.se_availability).nines,
            "rho": float(self.rho),
            "cells": [c.to_json() for c in self.cells],
        }


@dataclass(frozen=True)
class Table:
    """Like the paper's Tables 1 (Eq. 1) and 2 (Eq. 2): rows of SE availability, (Q, N) columns."""

    columns: tuple[tuple[int, int], ...]
    rows: tuple[TableRow, ...]
    convention: Convention
    rho_he: Fraction | None = None
    he_availability: Fraction | None = None

    def nines(self) -> list[list[int | None]]:
        return [[c.availability.nines for c in row.cells] for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {
            "equation": "eq2" if self.rho_he is not None else "eq1",
            "load_convention": self.convention,
            "rho_he": None if self.rho_he is None else float(self.rho_he),
            "he_availability": _dec(self.he_availability),
            "columns": [{"q": q, "n": n} for q, n in self.columns],
            "rows": [r.to_json() for r in self.rows],
        }


def table(
    se_availabilities: Iterable[Fraction],
    columns: Iterable[tuple[int, int]],
    *,
    rho_he: Fraction | None = None,
    he_availability: Fraction | None = None,
    convention: Convention = "exact",
) -> Table:
    """One row per SE availability, one column per valid (Q, N) (Q > N columns are dropped)."""
    cols = tuple((q, n) for q, n in columns if 1 <= q <= n)
    if not cols:
        raise ModelError("no (Q, N) column with 1 <= Q <= N")
    if he_availability is not None:
        rho_he = rho_from_availability(he_availability, convention)
    rows = []
    for a in se_availabilities:
        rho = rho_from_availability(a, convention)
        cells = tuple(
            TableCell(
                q,
                n,
                Availability(eq1(rho, q, n) if rho_he is None else eq2(rho, rho_he, q, n)),
            )
            for q, n in cols
        )
        rows.append(TableRow(a, rho, cells))
    return Table(cols, tuple(rows), convention, rho_he, he_availability)
