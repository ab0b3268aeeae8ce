"""The arithmetic the demo's verdict rests on: what counts as lost, and what the client saw."""

from __future__ import annotations

import json
import shlex

from click.testing import CliRunner

from ophiura.cli import main
from ophiura.demo.client import Ack, Ledger, outage, typical_gap, verify
from ophiura.demo.report import OUTAGE_THRESHOLD, availability, client_availability


def _ledger(times: list[float], fails: tuple[float, ...] = ()) -> Ledger:
    led = Ledger()
    for i, t in enumerate(times):
        led.acked.append(Ack(f"r{i}", f"d{i}", t - 0.005, t, "n1" if t < 10 else "n2"))
    led.failures = [(t, "ClientConnectorError: refused") for t in fails]
    led.attempts = len(times) + len(led.failures)
    return led


def test_verify_counts_missing_and_altered_records_as_lost() -> None:
    led = _ledger([1.0, 2.0, 3.0, 4.0])
    stored = {"node": "n1", "records": [["r0", "d0"], ["r1", "d1"], ["r2", "d2"], ["r3", "d3"]]}
    assert verify(led, stored)["lost"] == 0
    stored["records"] = [["r0", "d0"], ["r2", "other"], ["r3", "d3"], ["x", "never acked"]]
    v = verify(led, stored)
    assert v["lost"] == 2 and v["lost_ids"] == ["r1", "r2"] and v["verified"] == 2
    assert v["stored_unacknowledged"] == 1  # allowed: the answer was lost, not the record


def test_outage_is_the_longest_gap_from_the_last_ack_before_the_event() -> None:
    # acks every 0.1 s, then nothing from 9.95 to 11.2 (a failover at 10.0), then every 0.1 s
    times = [i / 10 for i in range(1, 100)] + [11.2 + i / 10 for i in range(20)]
    led = _ledger(times, fails=(10.1, 10.6))
    o = outage(led, 10.0, 13.0)
    assert abs(o["outage_s"] - (11.2 - 9.9)) < 1e-9
    assert o["failed_requests"] == 2 and o["errors"] == {"ClientConnectorError": 2}
    assert abs(o["outage_began_s"] - (9.9 - 10.0)) < 1e-9
    quiet = outage(led, 5.0, 9.0)
    assert quiet["outage_s"] is not None and quiet["outage_s"] < 0.11
    assert outage(led, 20.0, 30.0)["outage_s"] is None  # nothing acknowledged after: unknown
    assert abs(typical_gap(led, 1.0, 9.0) - 0.1) < 1e-9  # type: ignore[operator]


def test_client_availability_counts_only_long_gaps() -> None:
    times = [i / 10 for i in range(0, 101)] + [12.0 + i / 10 for i in range(0, 81)]
    a = client_availability(_ledger(times), 0.0, 20.0)
    assert OUTAGE_THRESHOLD < 2.0
    assert abs(a["unavailable_s"] - 2.0) < 1e-6 and abs(a["availability"] - 0.9) < 1e-6


def test_client_availability_figures_are_counted_like_ophiura_avail() -> None:
    """Percent truncated, nines counted, downtime a year: the same block as `ophiura avail`,
    so the client's figure sits in one table with the promised and log-measured ones."""
    times = [i / 10 for i in range(0, 101)] + [12.0 + i / 10 for i in range(0, 81)]
    a = client_availability(_ledger(times), 0.0, 20.0)
    assert a["nines"] == 1 and a["percent"] == "90%"
    assert abs(a["downtime_per_year_s"] - 0.1 * 365 * 86400) < 1e-6
    # a 0.2 s gap is below the threshold: no downtime at all, so no class of nines either
    times = [i / 10 for i in range(0, 1001)]
    times.remove(50.0)
    full = client_availability(_ledger(times), 0.0, 100.0)
    assert full["percent"] == "100%" and full["nines"] is None and full["unavailable_s"] == 0
    empty = client_availability(Ledger(), 5.0, 5.0)
    assert empty["availability"] is None and empty["window_s"] == 0


def test_outage_counts_only_what_happened_during_the_event() -> None:
    times = [i / 10 for i in range(1, 50)]
    led = _ledger(times, fails=(0.5, 3.0, 7.0))
    o = outage(led, 2.0, 4.0)
    assert o["failed_requests"] == 1  # 0.5 was before the event, 7.0 after its end
    # nothing acknowledged before the event: the gap cannot be measured, and says so
    assert outage(led, 0.0, 4.0)["outage_s"] is None
    assert verify(Ledger(), {"records": []})["lost"] == 0
    everything_lost = verify(led, {"records": []})
    assert everything_lost["lost"] == len(times) and everything_lost["verified"] == 0


def test_promised_storage_is_what_the_printed_ophiura_avail_command_says() -> None:
    """The report names the `ophiura avail` command behind its promised storage figure: running
    that command gives the same number (both use the model's own load by default)."""
    a = availability(Ledger(), 0.0, 1.0, (0.0, 1.0), [], 3, 2, "records", None, 1.0)
    ps = a["promised_storage"]
    args = shlex.split(a["promised_storage_args"])
    assert args[:2] == ["ophiura", "avail"]
    res = CliRunner().invoke(main, [*args[1:], "--json"])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.output)
    assert cli["eq1"]["exact"] == ps["exact"] and cli["eq1"]["nines"] == ps["nines"]
    assert cli["load_convention"] == a["assumptions"]["load_convention"] == "exact"
