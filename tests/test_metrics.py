"""ophiura.metrics: the text format, read back by prometheus_client's parser and a strict one."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ophiura import metrics as m
from web.promtext import ParseError, parse


def reference(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_counter_gauge_histogram_round_trip() -> None:
    r = m.Registry()
    c = r.counter("ophiura_things_total", "Things done.", ["kind"])
    c.labels("a").inc()
    c.labels("a").inc(2)
    c.labels("b").inc()
    g = r.gauge("ophiura_level", "A level.")
    g.set(-1.5)
    h = r.histogram("ophiura_wait_seconds", "Waits.", ["peer"], buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        h.labels("n2").observe(v)
    text = m.render(r.collect())
    fams = parse(text)
    assert fams["ophiura_things_total"].type == "counter"
    assert fams["ophiura_things_total"].samples == [
        ("ophiura_things_total", {"kind": "a"}, 3.0),
        ("ophiura_things_total", {"kind": "b"}, 1.0),
    ]
    assert fams["ophiura_level"].samples == [("ophiura_level", {}, -1.5)]
    hist = fams["ophiura_wait_seconds"].samples
    buckets = {s[1]["le"]: s[2] for s in hist if s[0].endswith("_bucket")}
    assert buckets == {"0.1": 2, "1": 3, "+Inf": 4}  # 0.1 is "less or equal" 0.1
    assert ("ophiura_wait_seconds_count", {"peer": "n2"}, 4.0) in hist
    assert ("ophiura_wait_seconds_sum", {"peer": "n2"}, 7.65) in hist
    ref = reference(text)
    # prometheus_client strips _total from a counter family's name
    assert ref["ophiura_things"].type == "counter"
    assert ref["ophiura_wait_seconds"].type == "histogram"
    assert {s.labels["le"] for s in ref["ophiura_wait_seconds"].samples if "le" in s.labels} == {
        "0.1", "1", "+Inf"
    }  # fmt: skip


def test_label_values_and_help_are_escaped() -> None:
    nasty = 'back\\slash "quoted"\nnewline } , = {'
    fam = m.Family("ophiura_x", "help with \\ and\nnewline", "gauge").add(1, name=nasty)
    text = m.render([fam])
    assert text.count("\n") == 3  # HELP, TYPE, one sample: no raw newline leaked
    assert parse(text)["ophiura_x"].samples[0][1] == {"name": nasty}
    assert parse(text)["ophiura_x"].help == "help with \\ and\nnewline"
    ref = reference(text)["ophiura_x"]
    assert ref.samples[0].labels == {"name": nasty}
    assert ref.documentation == "help with \\ and\nnewline"


def test_special_values() -> None:
    fam = m.Family("ophiura_v", "v", "gauge")
    for i, v in enumerate((math.inf, -math.inf, math.nan, 1e-7, 12345678901234567890.0)):
        fam.add(v, i=str(i))
    values = [s[2] for s in parse(m.render([fam]))["ophiura_v"].samples]
    assert values[:2] == [math.inf, -math.inf] and math.isnan(values[2])
    assert values[3:] == [1e-7, 12345678901234567890.0]


@pytest.mark.parametrize("bad", ["0abc", "with-dash", "sp ace", ""])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(m.MetricError, match="invalid metric name"):
        m.Registry().counter(bad, "x")


def test_bad_labels_and_duplicates_are_refused() -> None:
    r = m.Registry()
    with pytest.raises(m.MetricError, match="invalid label name"):
        r.gauge("ophiura_a", "a", ["__reserved"])
    with pytest.raises(m.MetricError, match="reserved"):
        r.histogram("ophiura_h", "h", ["le"])
    r.gauge("ophiura_b", "b")
    with pytest.raises(m.MetricError, match="twice"):
        r.gauge("ophiura_b", "b")
    with pytest.raises(m.MetricError, match="expected labels"):
        r.counter("ophiura_c_total", "c", ["x"]).labels("1", "2")
    with pytest.raises(m.MetricError, match="cannot decrease"):
        r.counter("ophiura_d_total", "d").inc(-1)
    with pytest.raises(m.MetricError, match="rendered twice"):
        m.render([m.Family("ophiura_e", "e", "gauge"), m.Family("ophiura_e", "e", "gauge")])


def test_collectors_run_at_scrape_time() -> None:
    r = m.Registry()
    state = {"n": 1}
    r.add_collector(lambda: [m.Family("ophiura_n", "n", "gauge").add(state["n"])])
    assert parse(m.render(r.collect()))["ophiura_n"].samples[0][2] == 1
    state["n"] = 5
    assert parse(m.render(r.collect()))["ophiura_n"].samples[0][2] == 5


def test_the_strict_parser_refuses_what_a_scraper_may_not_accept() -> None:
    """The checker itself must fail on bad input, or the tests above prove nothing."""
    good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n"
    parse(good)
    for bad in (
        good.rstrip("\n"),  # no final newline
        good + "# HELP b y\nb 1\na_total 2\n",  # a family split in two
        "a_total 1\n# TYPE a_total counter\n",  # TYPE after samples
        '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
        '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',  # no +Inf
        'a{x="\\q"} 1\n',  # bad escape
        "a 1\n\nb 2\n",  # empty line
    ):
        with pytest.raises(ParseError):
            parse(bad)
