"""`ip`: a floating address inside a network namespace the test creates (198.51.100.0/24 only,
nothing added to the root namespace), announced by a gratuitous ARP that start does not wait on."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ophiura.cluster.agents.base import OcfCode, Resource
from ophiura.cluster.agents.ip import IpAgent, drain_background
from ophiura.testkit.netns import add_address, missing_tools, namespace, veth
from ophiura.testkit.waiting import wait_for_async


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: ours (a0, 198.51.100.1) and a peer (b0, .2)."""
    if os.geteuid() != 0:
        print("SKIP: network namespaces need root")
        pytest.skip("network namespaces need root")
    why = missing_tools(arping="arping")
    if why:
        print(f"SKIP: {why}")
        pytest.skip(why)
    with namespace("ipa") as a, namespace("ipb") as b:
        veth(a, "a0", "b0", b)  # created inside `a`: nothing ever touches the root namespace
        add_address(a, "a0", "198.51.100.1/24")
        add_address(b, "b0", "198.51.100.2/24")
        yield a, b


def _has(ns: str, dev: str, addr: str) -> bool:
    out = subprocess.run(
        ["ip", "-n", ns, "-o", "addr", "show", "dev", dev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return f" {addr}/" in out


async def test_ip_start_monitor_stop_with_gratuitous_arp(pair: tuple[str, str]) -> None:
    a, _ = pair
    agent = IpAgent()
    res = Resource(
        "vip", "ip", {"ip": "198.51.100.50", "cidr_netmask": "24", "nic": "a0", "netns": a}
    )
    assert (await agent.validate(res, 5)).ok
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    t0 = time.monotonic()
    out = await agent.start(res, 5)
    elapsed = time.monotonic() - t0
    assert out.ok, out
    assert elapsed < 0.8, f"start waited on arping ({elapsed:.2f}s)"
    assert _has(a, "a0", "198.51.100.50")
    res10 = Resource(res.name, "ip", res.params, monitor_depth=10)
    assert (await agent.monitor(res, 5)).ok and (await agent.monitor(res10, 5)).ok
    assert (await agent.start(res, 5)).ok  # already there: fine
    await drain_background()
    assert (await agent.stop(res, 5)).ok
    assert not _has(a, "a0", "198.51.100.50")
    assert (await agent.monitor(res, 5)).code == OcfCode.NOT_RUNNING
    assert (await agent.stop(res, 5)).ok  # idempotent
    subprocess.run(["ip", "-n", a, "link", "set", "a0", "down"], check=True)
    assert (await agent.start(res, 5)).ok
    assert (await agent.monitor(res10, 5)).code == OcfCode.ERR_GENERIC  # depth 10: link down
    assert (await agent.stop(res, 5)).ok
    await drain_background()


async def test_ip_arp_announcement_is_sent(pair: tuple[str, str]) -> None:
    """The peer's neighbour entry for the VIP moves to our MAC without any traffic from it."""
    a, b = pair
    agent = IpAgent()
    res = Resource(
        "vip",
        "ip",
        {"ip": "198.51.100.60", "cidr_netmask": "24", "nic": "a0", "netns": a, "arp_count": "1"},
    )
    # the peer believes the VIP is at some stale MAC (the old owner's)
    subprocess.run(
        [
            "ip",
            "-n",
            b,
            "neigh",
            "replace",
            "198.51.100.60",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "b0",
            "nud",
            "stale",
        ],
        check=True,
    )
    assert (await agent.start(res, 5)).ok
    await drain_background()
    mac = (
        subprocess.run(
            ["ip", "-n", a, "-o", "link", "show", "a0"], capture_output=True, text=True, check=True
        )
        .stdout.split("link/ether ")[1]
        .split()[0]
    )
    neigh = subprocess.run(
        ["ip", "-n", b, "neigh", "show", "198.51.100.60", "dev", "b0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert mac in neigh, f"peer still has {neigh!r}, our MAC is {mac}"
    assert (await agent.stop(res, 5)).ok


async def test_a_lost_gratuitous_arp_is_repaired_by_the_next(pair: tuple[str, str]) -> None:
    """By default start announces several times, a second apart: if the first ARP is lost (the
    new owner's link flapping at takeover), the peer still moves to our MAC (issue 9's cluster
    torture saw a 24 s outage when the one ARP went nowhere)."""
    a, b = pair
    agent = IpAgent()
    res = Resource("vip", "ip", {"ip": "198.51.100.61", "cidr_netmask": "24", "nic": "a0",
                                 "netns": a})  # fmt: skip
    stale = ["ip", "-n", b, "neigh", "replace", "198.51.100.61", "lladdr", "02:00:00:00:00:99",
             "dev", "b0", "nud", "stale"]  # fmt: skip
    subprocess.run(stale, check=True)
    mac = (
        subprocess.run(
            ["ip", "-n", a, "-o", "link", "show", "a0"], capture_output=True, text=True, check=True
        )
        .stdout.split("link/ether ")[1]
        .split()[0]
    )

    def peer_sees() -> str:
        return subprocess.run(["ip", "-n", b, "neigh", "show", "198.51.100.61", "dev", "b0"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    assert (await agent.start(res, 5)).ok
    await wait_for_async(lambda: mac in peer_sees(), 5, "the first gratuitous ARP")
    subprocess.run(stale, check=True)  # as if that first ARP had been lost
    await wait_for_async(lambda: mac in peer_sees(), 5, "a later gratuitous ARP")

    def arpings() -> list[str]:
        pids = subprocess.run(["ip", "netns", "pids", a], capture_output=True, text=True).stdout
        found = []
        for pid in pids.split():
            try:
                if "arping" in Path(f"/proc/{pid}/cmdline").read_text():
                    found.append(pid)
            except OSError:  # it ended meanwhile
                pass
        return found

    assert arpings(), "start's arping ended early: the test proves nothing"
    assert (await agent.stop(res, 5)).ok  # the address is not ours: no more announcing it
    await wait_for_async(lambda: not arpings(), 1.0, "stop to end the announcements")
    await drain_background()


async def test_ip_errors() -> None:
    agent = IpAgent()
    bad = Resource("v", "ip", {"ip": "not-an-ip", "nic": "x"})
    assert (await agent.validate(bad, 5)).code == OcfCode.ERR_CONFIGURED
    assert (await agent.start(bad, 5)).code == OcfCode.ERR_CONFIGURED
    nonic = Resource("v", "ip", {"ip": "198.51.100.9"})
    out = await agent.validate(nonic, 5)
    assert out.code == OcfCode.ERR_CONFIGURED and "'nic'" in out.reason
    wide = Resource("v", "ip", {"ip": "198.51.100.9", "nic": "x", "cidr_netmask": "33"})
    assert (await agent.validate(wide, 5)).code == OcfCode.ERR_CONFIGURED
