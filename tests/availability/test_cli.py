"""`ophiura avail`: every mode, its JSON keys, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.availability.test_starfish import TABLE1, TABLE1_COLUMNS, TABLE2

from ophiura.cli import main


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["avail", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def run_json(*args: str) -> dict:
    code, out = run(*args, "--json")
    assert code == 0, out
    return json.loads(out)


def test_nines_mode() -> None:
    d = run_json("--nines", "0.99987")
    assert d["mode"] == "nines" and d["class"] == 3 and d["nines"] == 3
    assert d["class_allows_downtime_per_year_s"] == 31536.0
    assert run_json("--nines", "0.999967")["class"] == 4
    assert run_json("--nines", "99.9999%")["class"] == 6
    d = run_json("--class", "3")
    assert d["downtime_per_year_s"] == 31536.0 and d["percent"] == "99.9%"
    d = run_json("--downtime-per-year", "525.6min")
    assert d["class"] == 3 and d["availability"] == 0.999
    d = run_json("--failures-per-year", "10", "--restore", "18s")
    assert d["percent"] == "99.999429%" and d["downtime_per_year_s"] == 180
    d = run_json("--failures-per-year", "10", "--detect", "2s", "--recover", "16s")
    assert d["restore_s"] == 18 and d["nines"] == 5
    code, out = run("--nines", "0.99987")
    assert code == 0 and "8 h 45 min 36 s" in out and "99.987%" in out


def test_starfish_mode() -> None:
    d = run_json("--se-availability", "0.99", "-N", "3", "-Q", "1")
    assert d["mode"] == "starfish" and d["eq1"]["nines"] == 6 and d["simulation"] is None
    d = run_json("--se-availability", "0.99", "-N", "3", "-Q", "3")
    assert d["eq1"]["availability"] < d["single_se"]["availability"] == 0.99
    # the paper's claim (6 nines) holds with the paper's load; the model's own load gives 5
    d = run_json("--se-availability", "99%", "-N", "3", "-Q", "2", "--read-only",
                 "--he-availability", "0.9999", "--paper-load")  # fmt: skip
    assert d["read_only"]["eq2"]["nines"] == 6 and d["read_only"]["rho_he"] == 1e-4
    assert d["load_convention"] == "paper"
    d = run_json("--se-availability", "99%", "-N", "3", "-Q", "2", "--read-only",
                 "--he-availability", "0.9999")  # fmt: skip
    assert d["read_only"]["eq2"]["nines"] == 5 and d["load_convention"] == "exact"
    assert d["rho_exact"] == "1/99"
    d = run_json("--rho", "0.5", "-N", "3", "-Q", "2", "--simulate", "--years", "20",
                 "--seed", "3")  # fmt: skip
    sim = d["simulation"]
    assert sim["formula_inside_ci"] is True and sim["seed"] == 3 and sim["replications"] == 20
    assert set(sim) >= {"availability", "ci_low", "ci_high", "confidence", "outages", "events",
                        "formula_availability", "warnings", "nines", "half_width"}  # fmt: skip
    code, out = run("--se-availability", "0.99", "-N", "3", "-Q", "1", "--paper-load")
    assert code == 0 and "99.9999029%" in out and "1/4^Q" in out
    assert "the paper's load rho = 1-A" in out
    # the model's own load: each SE is down 1% of the time, all three 1e-6
    code, out = run("--se-availability", "0.99", "-N", "3", "-Q", "1")
    assert code == 0 and "99.9999%" in out and "the model's load rho = (1-A)/A" in out
    assert run_json("--se-availability", "0.99", "-N", "3", "-Q", "1")["eq1"]["exact"] == (
        "999999/1000000"
    )


def test_one_se_and_eq1_agree_by_default() -> None:
    """Issue 12: "one SE: 95%" and Eq. 1 with N = Q = 1 in the same result are the same number
    under the default load; the paper's conversion (--paper-load) makes them differ."""
    d = run_json("--se-availability", "0.95", "-N", "1", "-Q", "1")
    assert d["single_se"]["exact"] == d["eq1"]["exact"] == "19/20"
    assert d["load_convention"] == "exact" and d["rho_exact"] == "1/19"
    d = run_json("--se-availability", "0.95", "-N", "1", "-Q", "1", "--paper-load")
    assert d["single_se"]["exact"] == "19/20" and d["eq1"]["exact"] == "20/21"
    assert d["load_convention"] == "paper" and d["rho"] == 0.05
    assert run_json("--se-availability", "0.95", "--exact-load")["load_convention"] == "exact"


def test_table_mode() -> None:
    d = run_json("--table", "--se-availability", "0.9,0.99,0.999,0.9999", "-Q", "1,2,3",
                 "-N", "2..5", "--read-only", "--he-availability", "0.9999",
                 "--paper-load")  # fmt: skip
    assert d["mode"] == "table" and d["equation"] == "eq2" and d["load_convention"] == "paper"
    cols = [(c["q"], c["n"]) for c in d["columns"]]
    assert (3, 2) not in cols and len(cols) == 4 + 4 + 3  # Q <= N only
    want = {(1, 2): 0, (1, 3): 1, (1, 4): 2, (2, 3): 3, (2, 4): 4, (2, 5): 5, (3, 3): 6,
            (3, 4): 7, (3, 5): 8}  # fmt: skip
    for row, paper in zip(d["rows"], TABLE2, strict=True):
        got = {(c["q"], c["n"]): c["nines"] for c in row["cells"]}
        assert {k: got[k] for k in want} == {k: paper[i] for k, i in want.items()}
    code, out = run("--table", "--se-availability", "0.9,0.99", "-Q", "1", "-N", "2,3")
    assert code == 0 and "Q=1" in out and "0.99 (2)" in out


def _table1(*extra: str) -> list[list[int]]:
    d = run_json("--table", "--se-availability", "0.9,0.99,0.999,0.9999", "-Q", "1..3",
                 "-N", "2..7", *extra)  # fmt: skip
    cols = [(c["q"], c["n"]) for c in d["columns"]]
    return [[row["cells"][cols.index(col)]["nines"] for col in TABLE1_COLUMNS] for row in d["rows"]]


def test_paper_tables_need_paper_load() -> None:
    """--paper-load reproduces Table 1 exactly; the default (the model's load) differs in the
    one cell the library test names (90% SEs, Q=3, N=6: 2 nines, not 3)."""
    assert _table1("--paper-load") == TABLE1
    default = _table1()
    diff = [(r, c) for r, row in enumerate(default) for c, v in enumerate(row) if v != TABLE1[r][c]]
    assert diff == [(0, 8)] and default[0][8] == 2


def test_cluster_mode() -> None:
    d = run_json("--cluster", "--nodes", "2", "--uptime", "30d", "--downtime", "4h",
                 "--detect", "2s", "--recover", "16s", "--simulate", "--years", "500")  # fmt: skip
    assert d["mode"] == "cluster" and d["restore_s"] == 18 and d["eq3"]["nines"] == 4
    assert d["simulation"]["formula"] == "Eq. 3"
    code, out = run("--cluster", "--nodes", "2", "--uptime", "30d", "--downtime", "4h",
                    "--recover", "18s")  # fmt: skip
    assert code == 0 and "Eq. 3" in out


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is in the dev extra")
    png = tmp_path / "avail.png"
    d = run_json("--se-availability", "0.99", "-N", "3", "-Q", "2", "--plot", str(png))
    assert d["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    code, out = run("--plot", str(tmp_path / "x.png"))
    assert code == 2 and "needs matplotlib" in out and "pip install" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--se-availability", "1.5"], "outside (0, 1)"),
        (["--se-availability", "0"], "outside (0, 1)"),
        (["--se-availability", "abc"], "not a number"),
        (["--nines", "1"], "outside (0, 1)"),
        (["--se-availability", "0.99", "-N", "3", "-Q", "4"], "cannot exceed N"),
        (["--rho", "1", "-N", "3", "-Q", "2"], "rho = 1 is outside (0, 1)"),
        (["--rho", "2.5"], "outside (0, 1)"),
        (["--table", "--se-availability", "0.9,1.1"], "outside (0, 1)"),
        (["--table", "--se-availability", "0.9", "-Q", "4", "-N", "2..3"], "no column"),
        (["--se-availability", "0.99", "-N", "2..5"], "lists and ranges are for --table"),
        (["--se-availability", "0.99", "--read-only"], "--he-availability"),
        (["--nines", "0.9", "--cluster"], "one question at a time"),
        ([], "nothing to compute"),
        (["--cluster", "--nodes", "2"], "--uptime"),
        (
            ["--cluster", "--nodes", "2", "--uptime", "soon", "--downtime", "1h", "--recover", "1"],
            "not a duration",
        ),
        (["--measured"], "--log"),
        (["--measured", "--log", "/nonexistent/ophiura-events"], "no such file"),
        (["--failures-per-year", "10"], "--restore"),
        (["--se-availability", "0.99", "--simulate", "--years", "0"], "positive"),
        (["--se-availability", "0.99", "--paper-load", "--exact-load"], "not both"),
    ],
)
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    code, out = run(*args)
    assert code == 2, out
    assert message in out and "Traceback" not in out


def test_real_process() -> None:
    exe = Path(sys.executable).with_name("ophiura")
    if not exe.exists():
        pytest.skip("ophiura is not installed in this environment")
    ok = subprocess.run([exe, "avail", "--nines", "0.999967", "--json"], capture_output=True,
                        text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and json.loads(ok.stdout)["class"] == 4
    bad = subprocess.run([exe, "avail", "--se-availability", "0.99", "-Q", "4", "-N", "3"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "Error: Q = 4 with N = 3" in bad.stderr
