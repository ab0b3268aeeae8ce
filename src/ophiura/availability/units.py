"""Exact numbers from what people type: probabilities, durations and instants.

Availability figures live or die in their last digits (0.999999 is six nines; the nearest float
is not), so every number that reaches a formula is a `Fraction` built from the decimal *string*
the user typed, never from a float.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

YEAR_S = 365 * 86400  # Bottomley's budgets (class 3 = 8 h 45.6 min) use a 365-day year

_UNITS: dict[str, int | Fraction] = {
    "ms": Fraction(1, 1000),
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": YEAR_S,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|sec|min|s|m|h|d|w|y)?", re.IGNORECASE)


def exact(value: str | int | Fraction | Decimal) -> Fraction:
    """A Fraction from a decimal string ("0.99987", "1e-4", "1/3"), int, Decimal or Fraction."""
    if isinstance(value, Fraction | int | Decimal):
        return Fraction(value)
    if isinstance(value, float):
        raise TypeError("pass the decimal string, not a float: a float has lost digits already")
    text = value.strip()
    try:
        if "/" in text:
            return Fraction(text)
        return Fraction(Decimal(text))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        raise ValueError(f"{value!r} is not a number") from None


def decimal_str(value: Fraction) -> str:
    """`Fraction(99, 100)` -> `0.99`: exact decimal when it terminates, else `p/q`."""
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return str(value)
    places = max(twos, fives)
    scaled = value * 10**places
    sign = "-" if scaled < 0 else ""
    whole = abs(scaled.numerator)
    if not places:
        return f"{sign}{whole}"
    return f"{sign}{whole // 10**places}.{whole % 10**places:0{places}d}"


def parse_probability(text: str | Fraction, what: str = "availability") -> Fraction:
    """`0.99`, `99%` or `99.9 %` as an exact Fraction strictly between 0 and 1."""
    if isinstance(text, Fraction):
        value = text
    else:
        s = text.strip()
        percent = s.endswith("%")
        value = exact(s.rstrip("%").strip()) if s else exact("x")
        if percent:
            value /= 100
    if not 0 < value < 1:
        raise ValueError(
            f"{what} {text} is outside (0, 1): give a fraction such as 0.999 or a percentage "
            "such as 99.9%"
        )
    return value


def parse_duration(text: str | int | Fraction) -> Fraction:
    """Seconds in `18s`, `4h`, `1h30m`, `525.6min`, `30d` or a bare number of seconds."""
    if isinstance(text, int | Fraction):
        value = Fraction(text)
    else:
        s = text.strip().replace(" ", "")
        if not s:
            raise ValueError("empty duration")
        pos, value = 0, Fraction(0)
        while pos < len(s):
            m = _PART.match(s, pos)
            if not m or m.end() == pos:
                raise ValueError(
                    f"{text!r} is not a duration (examples: 18s, 4h, 1h30m, 525.6min, 30d, 1y)"
                )
            number, unit = m.groups()
            value += exact(number) * _UNITS[(unit or "s").lower()]
            pos = m.end()
    if value < 0:
        raise ValueError(f"duration {text!r} is negative")
    return value


def format_duration(seconds: Fraction | float) -> str:
    """`31536` -> `8 h 45 min 36 s`: how a person reads a downtime budget."""
    s = Fraction(seconds) if not isinstance(seconds, Fraction) else seconds
    if s == 0:
        return "0 s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        whole = int(s // size)
        if whole:
            parts.append(f"{whole} {unit}")
            s -= whole * size
    if s or not parts:
        secs = float(s)
        text = f"{secs:.3f}".rstrip("0").rstrip(".") if secs >= 0.001 else f"{secs:.3g}"
        parts.append(f"{text} s")
    return " ".join(parts)


def parse_instant(text: str, now: float) -> float:
    """Epoch seconds for `--since`/`--until`: ISO 8601 (naive = UTC), `now`, `@EPOCH`, or a
    relative `7d`/`1h30m` meaning that long before `now`."""
    s = text.strip()
    if s == "now":
        return now
    if s.startswith("@"):
        try:
            return float(exact(s[1:]))
        except ValueError:
            raise ValueError(f"{text!r}: @ must be followed by epoch seconds") from None
    if re.fullmatch(r"[\d.]+\s*(ms|sec|min|s|m|h|d|w|y)([\d.]+\s*(ms|sec|min|s|m|h|d|w|y))*", s):
        return now - float(parse_duration(s))
    try:
        when = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-20T08:00:00Z; no zone = UTC), "
            "a relative age (90m, 7d) or @EPOCH"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def iso(epoch: float) -> str:
    """UTC ISO 8601 with milliseconds, the event log's resolution."""
    return (
        dt.datetime.fromtimestamp(epoch, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
