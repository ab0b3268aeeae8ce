"""A strict parser of the Prometheus text format (0.0.4), for tests.

prometheus_client's parser is the reference the issue names, and the tests use it too; but it is
lenient where a scraper may not be (it accepts a family split in two, a HELP after samples, a
histogram whose buckets shrink). This one refuses all of that, naming the line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE_RE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


class ParseError(ValueError):
    pass


@dataclass
class Fam:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _value(text: str, where: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)", text):
        raise ParseError(f"{where}: bad value {text!r}")
    return float(text)


def _labels(text: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        m = re.compile(rf"({LABEL})=\"").match(text, i)
        if not m:
            raise ParseError(f"{where}: bad label at {text[i:]!r}")
        key, i = m.group(1), m.end()
        val = []
        while True:
            if i >= len(text):
                raise ParseError(f"{where}: unterminated label value")
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1 : i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ParseError(f"{where}: bad escape \\{nxt}")
                val.append("\n" if nxt == "n" else nxt)
                i += 2
            elif ch == '"':
                i += 1
                break
            elif ch == "\n":
                raise ParseError(f"{where}: raw newline in a label value")
            else:
                val.append(ch)
                i += 1
        if key in out:
            raise ParseError(f"{where}: label {key} twice")
        out[key] = "".join(val)
        if i < len(text):
            if text[i] != ",":
                raise ParseError(f"{where}: expected ',' at {text[i:]!r}")
            i += 1
    return out


def _family_of(sample: str, fams: dict[str, Fam]) -> str:
    for fam in fams.values():
        for suffix in SUFFIXES.get(fam.type, ("",)):
            if sample == fam.name + suffix:
                return fam.name
    return sample


def parse(text: str) -> dict[str, Fam]:
    """Families by name; ParseError naming the line for anything not strictly valid."""
    if text and not text.endswith("\n"):
        raise ParseError("the exposition must end with a newline")
    fams: dict[str, Fam] = {}
    closed: set[str] = set()
    current: str | None = None
    for no, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {no}"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not re.fullmatch(NAME, name):
                    raise ParseError(f"{where}: bad metric name {name!r}")
                if name in closed:
                    raise ParseError(f"{where}: {name} appears again after another family")
                fam = fams.setdefault(name, Fam(name))
                if fam.samples:
                    raise ParseError(f"{where}: {parts[1]} of {name} after its samples")
                rest = parts[3] if len(parts) == 4 else ""
                if parts[1] == "HELP":
                    if fam.help is not None:
                        raise ParseError(f"{where}: second HELP for {name}")
                    if re.search(r"\\[^\\n]", rest.replace("\\\\", "")):
                        raise ParseError(f"{where}: bad escape in HELP")
                    fam.help = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], rest)
                else:
                    if fam.type != "untyped" or rest not in (
                        "counter", "gauge", "histogram", "summary", "untyped"
                    ):  # fmt: skip
                        raise ParseError(f"{where}: bad or second TYPE for {name}: {rest!r}")
                    fam.type = rest
                if current is not None and current != name:
                    closed.add(current)
                current = name
            continue
        if not line.strip():
            raise ParseError(f"{where}: empty line")
        m = SAMPLE_RE.match(line)
        if not m:
            raise ParseError(f"{where}: not a sample: {line!r}")
        sname, raw_labels, raw_value, _ = m.groups()
        labels = _labels(raw_labels or "", where)
        value = _value(raw_value, where)
        fname = _family_of(sname, fams)
        if fname in closed:
            raise ParseError(f"{where}: {fname} appears again after another family")
        if current is not None and current != fname:
            closed.add(current)
        current = fname
        fam = fams.setdefault(fname, Fam(fname))
        if fam.type == "counter" and (value < 0 or math.isnan(value)):
            raise ParseError(f"{where}: counter {sname} = {value}")
        fam.samples.append((sname, labels, value))
    for fam in fams.values():
        if fam.type == "histogram":
            _check_histogram(fam)
    return fams


def _check_histogram(fam: Fam) -> None:
    series: dict[tuple[tuple[str, str], ...], dict[str, object]] = {}
    for sname, labels, value in fam.samples:
        labels = dict(labels)
        le = labels.pop("le", None) if sname.endswith("_bucket") else None
        key = tuple(sorted(labels.items()))
        s = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if sname.endswith("_bucket"):
            if le is None:
                raise ParseError(f"{fam.name}: a bucket without le")
            s["buckets"].append((_value(le, fam.name), value))  # type: ignore[union-attr]
        elif sname.endswith("_sum"):
            s["sum"] = value
        else:
            s["count"] = value
    for key, s in series.items():
        buckets = s["buckets"]
        assert isinstance(buckets, list)
        les = [b for b, _ in buckets]
        counts = [c for _, c in buckets]
        if not les or les[-1] != math.inf:
            raise ParseError(f'{fam.name}{dict(key)}: no le="+Inf" bucket last')
        if les != sorted(les) or counts != sorted(counts):
            raise ParseError(f"{fam.name}{dict(key)}: buckets not cumulative in le order")
        if s["sum"] is None or s["count"] is None:
            raise ParseError(f"{fam.name}{dict(key)}: _sum or _count missing")
        if s["count"] != counts[-1]:
            raise ParseError(f"{fam.name}{dict(key)}: _count != +Inf bucket")
