"""A tiny metrics registry and the Prometheus text exposition format (version 0.0.4).

Why not `prometheus-client`: its counters and histograms take a lock per update, which measured
several times the cost of this module's plain attribute updates (docs/dependencies.md has the
numbers); the HE and SE will update per-I/O metrics on their hot path, and a scrape-time renderer
is a page of code. The format is written to the letter of the specification: `# HELP` and
`# TYPE` once per family and before its samples, label values escaped (backslash, double quote,
newline), HELP text escaped (backslash, newline), histograms as cumulative `_bucket{le=...}`
series ending in `le="+Inf"`, then `_sum` and `_count`.

Two ways to expose a value:
- owned metrics (`Counter`, `Gauge`, `Histogram`), updated where things happen; each labelled
  child is a small object whose update is one attribute write (a histogram: a bisect and two
  writes). A child must be updated from one thread (or one event loop) only; a scrape from another
  thread reads a consistent-enough snapshot (each number is read once);
- collectors: functions called at scrape time that return `Family` objects built from state the
  program keeps anyway (the cluster daemon's membership and hierarchy states), so nothing is
  stored twice.

The HE and SE can use the same `Registry`: create their counters and histograms at start, update
them on the I/O path, and serve `render(registry)` on their HTTP port.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TYPES = ("counter", "gauge", "histogram", "untyped")
# Seconds, from a LAN round trip (100 us) to a slow failover (a minute).
DEFAULT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class MetricError(ValueError):
    """A metric or label name that the exposition format does not allow, or a bad definition."""


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise MetricError(f"invalid metric name {name!r}")
    return name


@functools.lru_cache(maxsize=1024)  # a scrape checks the same few label sets thousands of times
def _check_label_set(names: tuple[str, ...]) -> tuple[str, ...]:
    return _check_labels(names)


def _check_labels(names: Sequence[str]) -> tuple[str, ...]:
    for n in names:
        if not LABEL_RE.match(n) or n.startswith("__"):
            raise MetricError(f"invalid label name {n!r}")
    if len(set(names)) != len(names):
        raise MetricError(f"duplicate label names in {list(names)}")
    return tuple(names)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float) -> str:
    """Go's ParseFloat accepts all of these; integers are written without a fraction."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


# -- families: what a scrape renders ----------------------------------------------------------


class Sample(NamedTuple):
    """One line: `name{labels} value`; `name` includes any _bucket/_sum/_count suffix.
    (A tuple, not a dataclass: a scrape makes thousands.)"""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass
class Family:
    """All the samples of one metric name, with its HELP and TYPE."""

    name: str
    help: str
    type: str = "untyped"
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.type not in TYPES:
            raise MetricError(f"{self.name}: unknown type {self.type!r}")

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        _check_label_set(tuple(labels))
        self.samples.append(Sample(self.name + suffix, tuple(labels.items()), float(value)))
        return self

    def add_histogram(
        self, buckets: Sequence[float], counts: Sequence[int], total: float, **labels: str
    ) -> Family:
        """Cumulative `_bucket` lines from per-bucket counts (the last one is +Inf)."""
        running = 0
        for le, n in zip((*buckets, math.inf), counts, strict=True):
            running += n
            self.add(running, "_bucket", **labels, le=format_value(le))
        self.add(total, "_sum", **labels)
        self.add(running, "_count", **labels)
        return self


# -- owned metrics ----------------------------------------------------------------------------


class _Metric:
    type = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = _check_name(name)
        self.help = help
        self.labelnames = _check_labels(labelnames)
        if "le" in self.labelnames and self.type == "histogram":
            raise MetricError(f"{name}: 'le' is reserved for histogram buckets")
        self._children: dict[tuple[str, ...], object] = {}

    def _new_child(self) -> object:
        raise NotImplementedError

    def labels(self, *values: str) -> object:
        if len(values) != len(self.labelnames):
            raise MetricError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def family(self) -> Family:
        fam = Family(self.name, self.help, self.type)
        for key, child in list(self._children.items()):
            self._render(fam, dict(zip(self.labelnames, key, strict=True)), child)
        return fam

    def _render(self, fam: Family, labels: dict[str, str], child: object) -> None:
        raise NotImplementedError


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class Counter(_Metric):
    """Only grows; rendered as `name` (callers pick names ending in `_total`)."""

    type = "counter"

    def _new_child(self) -> _Value:
        return _Value()

    def labels(self, *values: str) -> _Value:  # type: ignore[override]
        return super().labels(*values)  # type: ignore[return-value]

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise MetricError(f"{self.name}: a counter cannot decrease")
        self.labels().inc(amount)

    def _render(self, fam: Family, labels: dict[str, str], child: object) -> None:
        assert isinstance(child, _Value)
        fam.add(child.value, **labels)


class Gauge(Counter):
    type = "gauge"

    def set(self, value: float) -> None:
        self.labels().set(value)


class _Hist:
    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal")
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


class Histogram(_Metric):
    type = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help, labelnames)
        b = tuple(float(x) for x in buckets if not math.isinf(x))
        if not b or list(b) != sorted(set(b)):
            raise MetricError(f"{name}: buckets must be increasing and not empty")
        self.buckets = b

    def _new_child(self) -> _Hist:
        return _Hist(self.buckets)

    def labels(self, *values: str) -> _Hist:  # type: ignore[override]
        return super().labels(*values)  # type: ignore[return-value]

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def _render(self, fam: Family, labels: dict[str, str], child: object) -> None:
        assert isinstance(child, _Hist)
        fam.add_histogram(self.buckets, list(child.counts), child.sum, **labels)


Collector = Callable[[], Iterable[Family]]


class Registry:
    """Owned metrics and scrape-time collectors; `render()` writes them all."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Collector] = []

    def register(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise MetricError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        m = Counter(name, help, labelnames)
        self.register(m)
        return m

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        m = Gauge(name, help, labelnames)
        self.register(m)
        return m

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        m = Histogram(name, help, labelnames, buckets)
        self.register(m)
        return m

    def add_collector(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> list[Family]:
        fams = [m.family() for m in self._metrics.values()]
        for c in self._collectors:
            fams.extend(c())
        return fams


def render(families: Iterable[Family]) -> str:
    """The text exposition of `families`; a name given twice is a bug, refused loudly."""
    out: list[str] = []
    seen: set[str] = set()
    for fam in families:
        if fam.name in seen:
            raise MetricError(f"metric family {fam.name} rendered twice")
        seen.add(fam.name)
        out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for s in fam.samples:
            if s.labels:
                inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in s.labels)
                out.append(f"{s.name}{{{inner}}} {format_value(s.value)}")
            else:
                out.append(f"{s.name} {format_value(s.value)}")
    return "\n".join(out) + "\n" if out else ""
