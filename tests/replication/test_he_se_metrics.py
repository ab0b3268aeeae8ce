"""`/metrics` on a real HE and a real `ophiura se` (issue 12): scraped over HTTP, parsed strictly
(tests/web/promtext.py) and by prometheus_client, values that move with I/O, and the token rule."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from tests.web.promtext import parse

from ophiura.cli import main
from ophiura.metrics import CONTENT_TYPE
from ophiura.replication.he.config import ConfigError, build_config, load_toml
from ophiura.testkit.ports import free_port
from ophiura.testkit.waiting import wait_for_async as wait_for

from .he_harness import SeHandle, he_config, secret_file, start_he, wait_all_up

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "ophiura-storage.json"
TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
async def ses(tmp_path: Path) -> AsyncIterator[list[SeHandle]]:
    """Three `ophiura se` subprocesses; `a` serves /metrics (open: loopback)."""
    sf = secret_file(tmp_path)
    handles = [SeHandle(n, tmp_path / n, port=free_port(), secret_file=sf) for n in "abc"]
    handles[0].extra_args = ["--metrics", f"127.0.0.1:{free_port()}"]
    try:
        for h in handles:
            h.spawn()
        for h in handles:
            await h.wait_listening()
        yield handles
    finally:
        for h in handles:
            h.terminate()


async def get(port: int, token: str | None = None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def scrape(
    port: int, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (name, sorted labels); both parsers must accept the text."""
    status, ctype, text = await get(port, token)
    assert status == 200, text
    assert ctype == CONTENT_TYPE
    fams = parse(text)  # strict: raises on anything a scraper may refuse
    assert fams
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll an async condition (a scrape) until it holds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)


def val(m: dict, name: str, **labels: str) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


async def test_he_and_se_metrics_move_with_io(ses: list[SeHandle], tmp_path: Path) -> None:
    he = await start_he(he_config(ses, metrics=("127.0.0.1", 0)), tmp_path)
    try:
        assert he.metrics is not None and he.metrics.port
        port = he.metrics.port
        await wait_all_up(he)
        m = await scrape(port)
        assert val(m, "ophiura_he_role", role="active") == 1
        assert val(m, "ophiura_he_volume_ops_total", volume="vol", op="write") == 0
        vol = he.volumes["vol"].data
        for i in range(12):
            await vol.write(i * 4096, bytes([i + 1]) * 4096)
        for i in range(4):  # written through the cache: hits
            assert await vol.read(i * 4096, 4096) == bytes([i + 1]) * 4096
        for _ in range(4):  # never written: a miss, then hits
            assert await vol.read(100 * 4096, 4096) == bytes(4096)
        latest = vol.latest_seq

        async def caught_up() -> bool:
            m = await scrape(port)
            return all(
                val(m, "ophiura_he_replica_lag_writes", volume="vol", se=n) == 0 for n in "abc"
            )

        await until(caught_up, 10, "every SE acked every write (lag 0)")
        m = await scrape(port)
        assert val(m, "ophiura_he_volume_ops_total", volume="vol", op="write") == 12
        assert val(m, "ophiura_he_volume_bytes_total", volume="vol", op="write") == 12 * 4096
        assert val(m, "ophiura_he_volume_ops_total", volume="vol", op="read") == 8
        assert val(m, "ophiura_he_volume_bytes_total", volume="vol", op="read") == 8 * 4096
        lat = "ophiura_he_volume_latency_seconds"
        assert val(m, lat + "_count", volume="vol", op="write") == 12
        assert val(m, lat + "_bucket", volume="vol", op="write", le="+Inf") == 12
        assert (val(m, lat + "_sum", volume="vol", op="write") or 0) > 0
        assert (val(m, "ophiura_he_cache_hits_total", volume="vol") or 0) >= 4
        assert (val(m, "ophiura_he_cache_misses_total", volume="vol") or 0) >= 1
        assert val(m, "ophiura_he_volume_seq", volume="vol", kind="latest") == latest
        assert val(m, "ophiura_he_volume_seq", volume="vol", kind="acked") == latest
        assert (val(m, "ophiura_he_write_queue_bytes", volume="vol") or 0) >= 0
        assert val(m, "ophiura_he_write_queue_capacity_bytes", volume="vol") == 4 << 20
        for n in "abc":
            assert val(m, "ophiura_he_replica_state", volume="vol", se=n, state="up") == 1
            assert val(m, "ophiura_he_replica_state", volume="vol", se=n, state="failed") == 0
            assert val(m, "ophiura_he_replica_acked_seq", volume="vol", se=n) == latest
            assert val(m, "ophiura_he_se_connected", se=n) == 1

        # the SE `a`: its volume is up, holds every write, under the HE's ballot
        sport = int(ses[0].extra_args[1].rpartition(":")[2])

        async def se_applied() -> bool:
            s = await scrape(sport)
            return val(s, "ophiura_se_volume_applied_seq", volume="vol") == latest

        await until(se_applied, 10, "SE a applied every write")
        s = await scrape(sport)
        assert val(s, "ophiura_se_volume_state", volume="vol", state="up") == 1
        assert val(s, "ophiura_se_volume_state", volume="vol", state="failed") == 0
        assert val(s, "ophiura_se_volume_epoch", volume="vol") == vol.epoch
        assert val(s, "ophiura_se_volume_size_bytes", volume="vol") == 8 << 20
        assert (val(s, "ophiura_se_volume_commit_batches_total", volume="vol") or 0) >= 1
        assert val(s, "ophiura_se_volume_recovery_done_bytes", volume="vol") == 0
        assert (val(s, "ophiura_se_connections") or 0) >= 1

        texts = [(await get(port))[2], (await get(sport))[2]]
        check_dashboard(texts)

        # an SE that stops: its replica leaves `up`, and its lag grows with the next writes
        ses[2].terminate()
        await wait_for(lambda: vol.replicas["c"].state.value != "up", 10, "HE noticed SE c is gone")
        for i in range(3):
            await vol.write(i * 4096, b"z" * 4096)
        m = await scrape(port)
        assert val(m, "ophiura_he_replica_state", volume="vol", se="c", state="up") == 0
        assert (val(m, "ophiura_he_replica_lag_writes", volume="vol", se="c") or 0) >= 3
        assert val(m, "ophiura_he_volume_ops_total", volume="vol", op="write") == 15

        # back: it recovers (counted, with its progress), and its lag returns to 0
        def recoveries(m: dict) -> float:
            return sum(
                v
                for (name, labels), v in m.items()
                if name == "ophiura_he_replica_recoveries_total" and ("se", "c") in labels
            )

        before = recoveries(m)
        ses[2].spawn()
        await ses[2].wait_listening()

        async def recovered() -> bool:
            m = await scrape(port)
            return (
                val(m, "ophiura_he_replica_state", volume="vol", se="c", state="up") == 1
                and val(m, "ophiura_he_replica_lag_writes", volume="vol", se="c") == 0
            )

        await until(recovered, 20, "SE c recovered and caught up")
        m = await scrape(port)
        assert recoveries(m) == before + 1, {k: v for k, v in m.items() if "recover" in k[0]}
        done = val(m, "ophiura_he_replica_recovery_done", volume="vol", se="c")
        total = val(m, "ophiura_he_replica_recovery_total", volume="vol", se="c")
        assert done is not None and total is not None and done == total > 0, (done, total)
    finally:
        await he.stop()


def check_dashboard(texts: list[str]) -> None:
    """examples/grafana/ophiura-storage.json queries only metrics the HE and SE export, and
    shows every family they export (tests/web checks the node dashboard the same way)."""
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    exported: set[str] = set()
    families: set[str] = set()
    for text in texts:
        for fam in parse(text).values():
            families.add(fam.name)
            exported.add(fam.name)
            exported.update(s[0] for s in fam.samples)
    used = {n for e in exprs for n in re.findall(r"\b(ophiura_[a-z0-9_]+)", e)}
    assert not sorted(used - exported), f"not exported: {sorted(used - exported)}"
    unshown = sorted(f for f in families if not any(u == f or u.startswith(f + "_") for u in used))
    assert not unshown, f"exported but not on the dashboard: {unshown}"


async def test_metrics_token(ses: list[SeHandle], tmp_path: Path) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    cfg = he_config(ses, metrics=("127.0.0.1", 0), metrics_token_file=token_file)
    he = await start_he(cfg, tmp_path)
    try:
        assert he.metrics is not None
        for bad in (None, "wrong-token-0123456789"):
            status, _, _ = await get(he.metrics.port, bad)
            assert status == 401
        m = await scrape(he.metrics.port, TOKEN)
        assert val(m, "ophiura_he_role", role="active") == 1
    finally:
        await he.stop()


def test_metrics_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    base = {"se": ["a=127.0.0.1:1"], "quorum": 1}
    with pytest.raises(ConfigError, match="not a loopback address"):
        build_config({**base, "metrics": "0.0.0.0:9100"})
    cfg = build_config({**base, "metrics": "[::1]:9100"})  # loopback: open is allowed
    assert cfg.metrics == ("::1", 9100)
    cfg = build_config(
        {**base, "metrics": "198.51.100.1:9100", "metrics_token_file": str(tmp_path / "t")}
    )
    assert cfg.metrics_token_file == tmp_path / "t"
    toml = tmp_path / "he.toml"
    toml.write_text(
        'se = ["a=127.0.0.1:1"]\nquorum = 1\nmetrics = "198.51.100.1:9471"\n'
        f'metrics_token_file = "{tmp_path / "t"}"\n'
    )
    cfg = build_config(load_toml(toml))
    assert cfg.metrics == ("198.51.100.1", 9471) and cfg.metrics_token_file == tmp_path / "t"
    toml.write_text('se = ["a=127.0.0.1:1"]\nquorum = 1\nmetrics = "198.51.100.1:9471"\n')
    with pytest.raises(ConfigError, match="not a loopback address"):
        build_config(load_toml(toml))
    runner = CliRunner()
    for cmd in (
        ["he", "--se", "a=127.0.0.1:1", "--quorum", "1", "--metrics", "0.0.0.0:9100"],
        ["se", "--name", "a", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
         "--secret-file", str(secret_file(tmp_path)), "--metrics", "0.0.0.0:9100"],
    ):  # fmt: skip
        res = runner.invoke(main, cmd)
        assert res.exit_code != 0
        assert "not a loopback address" in res.output and "Traceback" not in res.output
    # a token file that is missing or too short: one line, no traceback
    short = tmp_path / "short"
    short.write_text("abc")
    for tf in (tmp_path / "missing", short):
        res = runner.invoke(
            main,
            ["se", "--name", "a", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
             "--secret-file", str(secret_file(tmp_path)), "--metrics", "127.0.0.1:0",
             "--metrics-token-file", str(tf)],
        )  # fmt: skip
        assert res.exit_code != 0 and "--metrics-token-file" in res.output, res.output
