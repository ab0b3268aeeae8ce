"""`ophiura demo`: the whole system on one machine, showing a failover that loses nothing.

Modules: `topology` (SEs and nodes on 127.0.0.1, or in namespaces as root: the lab of
`ophiura.testkit.netns`), `app` (the record application the cluster keeps available), `client`
(writes records, keeps the ledger of acknowledged ones), `scenario` (the story), `poller` +
`view` (the live view), `report` (JSON and human report), `target` (the older SCSI target tour).
With `--app postgres`: `postgres` (PostgreSQL's hierarchy, bootstrap and checks, shared with the
multi-host tests) and `pg_story` (the same story with PostgreSQL, a ledger client and pgbench).

Cleanup is the first concern of `run`: whatever happens (an exception, Ctrl-C, SIGTERM, the
terminal closing: SIGHUP), every
process started, every namespace created and the temp dir are gone when it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_LOST, EXIT_INTERRUPTED = 0, 1, 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class Options:
    headless: bool = False
    json_path: Path | None = None
    netns: bool | None = None  # None: when root and namespaces work
    keep: bool = False
    dashboard: bool = True
    pace: float = 1.0
    linger: bool = False
    app: str = "record"  # or "postgres": PostgreSQL 15 and pgbench (root, namespaces)


class _Terminated(BaseException):
    """SIGTERM or SIGHUP, turned into an exception so that the same cleanup runs as for
    Ctrl-C; the exit status is 128 + the signal, as if it had killed us."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.code = 128 + signum


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


def run(opts: Options) -> int:
    from rich.console import Console

    from ophiura.demo.poller import Poller
    from ophiura.demo.report import availability, render
    from ophiura.demo.scenario import Pace, Story, StoryError
    from ophiura.demo.topology import (
        HIERARCHY,
        QUORUM,
        Topology,
        TopologyError,
        namespaces_unavailable,
    )
    from ophiura.demo.view import LiveView, PlainNarrator

    # a pipe or a log file gets the report at a readable width, not 80 columns
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    why_not = namespaces_unavailable()
    use_netns = why_not is None if opts.netns is None else opts.netns
    if opts.app == "postgres":
        from ophiura.demo.postgres import unusable

        # one plain line each (a console would wrap a long one)
        if opts.netns is False:
            print(
                "ophiura demo: --app postgres runs in network namespaces only (loop devices, "
                "mounts: root), not with --no-netns",
                file=sys.stderr,
            )
            return 2
        why_not = unusable()
        if why_not:
            print(f"ophiura demo: --app postgres needs root and PostgreSQL 15: {why_not}",
                  file=sys.stderr)  # fmt: skip
            return 2
        use_netns = True
    if use_netns and why_not:
        console.print(f"[red]cannot use namespaces: {why_not}[/]")
        return 2
    run_id = f"{os.getpid() % 100000:x}{secrets.token_hex(2)}"
    # (under nohup SIGHUP stays ignored: that is what was asked for)
    old_handlers = {
        sig: signal.signal(sig, _on_sigterm)
        for sig in STOP_SIGNALS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    tmp = Path(tempfile.mkdtemp(prefix=f"ophiura-demo-{run_id}-"))
    try:  # nothing runs yet, but the temp dir exists: an interrupt here must not leave it
        topo = Topology(tmp, run_id, use_netns, dashboard=opts.dashboard, service=opts.app)
        if not use_netns:
            topo.left_out.insert(
                0, f"network namespaces (one per machine): {why_not or 'asked for --no-netns'}"
            )
        print(f"ophiura demo: run {run_id}, mode {topo.mode}, temp dir {tmp}", flush=True)
        poller = Poller(topo)
        # the live view needs a terminal (or FORCE_COLOR); a pipe or a log file gets plain lines
        live = not opts.headless and console.is_terminal
        narrator: PlainNarrator = LiveView(topo, poller, console) if live else PlainNarrator()
        if opts.app == "postgres":
            from ophiura.demo.pg_story import PgStory

            story: Story = PgStory(topo, narrator, poller, pace=Pace().scaled(opts.pace))
        else:
            story = Story(topo, narrator, poller, pace=Pace().scaled(opts.pace))
        report: dict[str, Any] = {
            "ok": False,
            "run_id": run_id,
            "mode": topo.mode,
            "app": opts.app,
            "left_out": topo.left_out,
            "n": len(topo.ses),
            "q": QUORUM,
            "nodes": list(topo.nodes),
            "events": story.events,
            "records": None,
            "availability": None,
            "dashboard": None,
            "error": None,
            "logs": str(tmp / "logs") if opts.keep else None,
        }
    except (KeyboardInterrupt, _Terminated) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _restore(old_handlers)
        print(f"ophiura demo: interrupted; run {run_id} cleaned up", flush=True)
        return exc.code if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _restore(old_handlers)
        raise
    code = EXIT_LOST
    rendered = False
    t0 = time.monotonic()
    try:
        narrator.start()
        poller.start()
        try:
            story.run()
        except (StoryError, TopologyError) as exc:
            report["error"] = str(exc)
            narrator.say(f"story stopped: {exc}", "bold red")
        except Exception as exc:  # a bug of ours: still clean up and report it
            report["error"] = f"{type(exc).__name__}: {exc}"
            narrator.say(f"story stopped: {report['error']}", "bold red")
            traceback.print_exc()
        if story.has_results():
            try:
                report["records"] = story.finish()
            except Exception as exc:  # nothing to read back from: that is a failure too
                report["error"] = report["error"] or f"read-back failed: {exc!r}"
                narrator.say(f"could not read the records back: {exc!r}", "bold red")
            if report["records"] is not None and story.ledger and story.ledger.acked:
                report["availability"] = _availability(story, topo, availability, HIERARCHY)
        report["dashboard"] = _dashboard(topo, HIERARCHY, opts)
        records = report["records"]
        lost = records["lost"] if records else None
        report["ok"] = (
            report["error"] is None and lost == 0 and records.get("invariants_hold", True)
        )
        code = EXIT_OK if report["ok"] else EXIT_LOST
    except (KeyboardInterrupt, _Terminated) as exc:
        report["error"] = "interrupted"
        code = exc.code if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    finally:
        for sig in (signal.SIGINT, *old_handlers):  # a second Ctrl-C must not stop cleanup
            signal.signal(sig, signal.SIG_IGN)
        poller.stop()
        narrator.stop()
        if story.client is not None:  # interrupted mid-story: close its connections first
            with contextlib.suppress(Exception):
                topo.loop("client").run(story.client.stop(), 5)
        report["duration_s"] = round(time.monotonic() - t0, 3)
        if code == EXIT_OK and opts.linger and report["dashboard"]:
            render(report, console)
            rendered = True
            _linger(console, report["dashboard"], tuple(old_handlers))
        topo.close()
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        _restore(old_handlers)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if report["error"] == "interrupted":
        print(f"ophiura demo: interrupted; run {run_id} cleaned up", flush=True)
    elif rendered:  # before lingering
        print(f"ophiura demo: run {run_id} cleaned up", flush=True)
    else:
        render(report, console)
    if opts.json_path is not None:
        try:
            opts.json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        except OSError as exc:
            print(f"ophiura demo: cannot write the JSON report: {exc}", file=sys.stderr)
            code = code or EXIT_LOST
    return code


def _restore(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _availability(story: Any, topo: Any, availability: Any, hierarchy: str) -> dict[str, Any]:
    from ophiura.demo.topology import QUORUM

    ledger = story.ledger
    first, end = ledger.acked[0].sent, story.client_stopped
    to_wall = time.time() - time.monotonic()
    failover = next((e for e in story.events if e["name"] == "node-crash"), None)
    return availability(
        ledger,
        first,
        end,
        (first + to_wall, end + to_wall),
        sorted((topo.tmp / "state").glob("*/events")),
        len(topo.ses),
        QUORUM,
        hierarchy,
        failover,
        topo.deadline,
        len(topo.nodes),
    )


def _dashboard(topo: Any, hierarchy: str, opts: Options) -> str | None:
    if not opts.dashboard:
        return None
    node = topo.nodes[0]
    url = topo.dashboard_url(node)
    if topo.use_netns:
        return (
            f"{url} inside namespace {topo.host_ns(node)} (reach it from there, e.g. "
            "`ip netns exec ... curl`); gone with the demo unless --linger"
        )
    return f"{url} (served by each node; gone with the demo unless --linger)"


def _linger(console: Any, where: str, stop_signals: tuple[int, ...]) -> None:
    """Keep the cluster up for a look at the dashboard, until Ctrl-C, SIGTERM or SIGHUP."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, *stop_signals):
        signal.signal(sig, interrupt)
    console.print(f"cluster still running; dashboard: {where}\npress Ctrl-C to stop and clean up")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, *stop_signals):
            signal.signal(sig, signal.SIG_IGN)
