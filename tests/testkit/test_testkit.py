"""ophiura.testkit: the helpers every live test stands on must themselves fail when broken."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ophiura.testkit import netns
from ophiura.testkit.ports import free_port, free_ports
from ophiura.testkit.procs import NotListening, spawn, stop, stop_all, wait_port, wait_port_async
from ophiura.testkit.waiting import WaitTimeout, poll, wait_for, wait_for_async

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
IGNORES_TERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True);"
    " time.sleep(60)",
]


def test_free_ports_are_distinct_and_bindable() -> None:
    tcp = free_ports(20)
    assert len(set(tcp)) == 20
    udp = free_ports(4, socket.SOCK_DGRAM)
    for port in udp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_wait_for_returns_elapsed_and_poll_the_value() -> None:
    t0 = time.monotonic()
    assert wait_for(lambda: time.monotonic() - t0 > 0.05, 5) >= 0.05
    box = iter([0, "", "ready"])
    assert poll(lambda: next(box), 5) == "ready"


def test_wait_for_timeout_names_what_the_last_error_and_details() -> None:
    def boom() -> bool:
        raise KeyError("not there yet")

    with pytest.raises(WaitTimeout, match=r"waiting for the key .*KeyError.*\n--- logs") as info:
        wait_for(boom, 0.1, "the key", details=lambda: "--- logs")
    assert isinstance(info.value, AssertionError)
    with pytest.raises(KeyError):  # ignore=(): the first error comes out at once
        wait_for(boom, 5, ignore=())

    class StoryError(RuntimeError):
        pass

    with pytest.raises(StoryError, match="never"):
        poll(lambda: False, 0.05, "never", error=StoryError)


def test_wait_for_async() -> None:
    flag: list[int] = []

    async def main() -> float:
        asyncio.get_running_loop().call_later(0.05, flag.append, 1)
        return await wait_for_async(lambda: flag, 5, "the flag")

    assert asyncio.run(main()) >= 0.04
    with pytest.raises(WaitTimeout):
        asyncio.run(wait_for_async(lambda: False, 0.05))


def test_wait_port_sees_a_listener_and_fails_early_on_exit(tmp_path: Path) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        wait_port(srv.getsockname()[1], 5)
        asyncio.run(wait_port_async(srv.getsockname()[1], 5))
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    t0 = time.monotonic()
    with pytest.raises(NotListening, match="exited with 3"):
        wait_port(free_port(), 30, dead)
    assert time.monotonic() - t0 < 10  # did not wait out the 30 s
    with pytest.raises(NotListening, match="nothing listens"):
        wait_port(free_port(), 0.1)


def test_spawn_logs_and_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    proc = spawn(IGNORES_TERM, "stubborn", tmp_path / "logs" / "p.log")
    wait_for(lambda: "up" in proc.tail(), 10, "the process's output in its log")
    t0 = time.monotonic()
    assert proc.stop(timeout=0.5) == -9  # SIGTERM ignored: SIGKILL after the grace period
    assert time.monotonic() - t0 < 5
    others = [subprocess.Popen(SLEEPER) for _ in range(3)]
    stop_all(others, 5)
    assert [p.returncode for p in others] == [-15] * 3
    assert stop(others[0]) == -15  # idempotent


@pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))
def test_namespace_and_veth_live_and_die_with_the_block() -> None:
    with netns.namespace("tk") as a, netns.namespace("tk") as b:
        netns.veth(a, "x0", "y0", b)
        netns.add_address(a, "x0", "198.51.100.1/24")
        netns.add_address(b, "y0", "198.51.100.2/24")
        assert {a, b} <= set(netns.list_netns())

        def listener() -> socket.socket:
            srv = socket.create_server(("198.51.100.2", 0))  # created in b: it lives there
            return srv

        with netns.in_netns(b, listener) as srv:  # reached from a across the pair

            def connect() -> int:
                with socket.socket() as c:
                    c.settimeout(2)
                    return c.connect_ex(srv.getsockname())

            assert netns.in_netns(a, connect) == 0
        assert "198.51.100.2" in netns.sh("ip", "-n", b, "-o", "-4", "addr", "show", "dev", "y0")
    assert not ({a, b} & set(netns.list_netns()))


@pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))
def test_the_lab_wires_hosts_on_their_networks_and_deletes_everything() -> None:
    with netns.Lab(nodes=("n1", "n2"), storage=False, ses=("a",), prefix="oph-tk-") as lab:
        assert lab.nets == ("a", "b", "s")
        assert lab.addresses("n2") == [netns.node_addr("a", 2)]
        assert lab.addresses("se-a", "ethS") == [netns.se_addr(1)]

        def reaches(host: str, port: int) -> bool:
            with socket.socket() as s:
                s.settimeout(2)
                return s.connect_ex((host, port)) == 0

        port = 7001
        server = lab.popen("se-a", [sys.executable, "-m", "http.server", str(port), "--bind",
                                    netns.se_addr(1)])  # fmt: skip
        wait_for(lambda: lab.call("n1", reaches, netns.se_addr(1), port), 20, "n1 -> se-a")
        lab.ports("n1", up=False)
        assert not lab.call("n1", reaches, netns.se_addr(1), port)
        assert server.alive()
        created = list(lab.created)
    assert not server.alive()
    assert not (set(created) & set(netns.list_netns()))
    assert netns.leftover_namespaces(lab.run_id, "oph-tk-") == []
