"""`ip`: a floating address (HATS "IP address takeover"), built in.

Params: `ip` (required, IPv4 or IPv6), `nic` (required: the device), `cidr_netmask` (prefix
length, default 32 / 128), `netns` (the device's network namespace), `label`, `arp_count`
(gratuitous ARPs to send, one a second, default 5 as IPaddr2's; 0 sends none), `arping` (the
program, default `arping`).

- start: `ip addr add IP/PREFIX dev NIC` (a present address is left alone), then a gratuitous ARP
  so neighbours move to our MAC at once (without it a client waits for its ARP cache to expire:
  41 s measured here, against 0.054 s with it). Several, a second apart: one ARP lost (the
  link flapping at takeover, the torture's cluster mode saw a 24 s outage so) is repaired by the
  next. Debian's arping is Thomas Habets' 2.23:
  `arping -U -c 1 -i DEV -S VIP VIP` (`-i` not `-I`, `-S` required) and it exits 1 after ~1 s
  even when the ARP went out — so it runs in the background: start returns as soon as the address
  is up, and arping's status is logged, never a failure. IPv6 addresses are added `nodad`
  (announced by the kernel's unsolicited NA), no arping.
- stop: `ip addr del` if present; absent is SUCCESS.
- monitor: the address is on the device -> SUCCESS, not there -> NOT_RUNNING, the device is gone
  -> ERR_GENERIC; at depth >= 10 the device must also be administratively UP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import ParamError, Params, config_error, done
from ophiura.cluster.agents.process_runner import netns_prefix, run_process

log = logging.getLogger(__name__)

ARPING_LIMIT = 10.0  # seconds a background arping may run (beyond its count) before it is killed
ARP_COUNT = 5  # gratuitous ARPs after start, one a second (IPaddr2's default arp_count too)
_background: set[asyncio.Task[None]] = set()
_announcing: dict[tuple[str | None, str, str], asyncio.Task[None]] = {}  # (netns, nic, ip)


def _cancel_announcements(key: tuple[str | None, str, str]) -> None:
    """Stop a background arping still announcing `key` (run_process kills its process group)."""
    task = _announcing.pop(key, None)
    if task is not None and not task.done():
        task.cancel()


class IpSpec:
    def __init__(self, resource: Resource) -> None:
        p = Params(resource)
        self.name = resource.name
        text = p.text("ip")
        try:
            self.address = ipaddress.ip_address(text)
        except ValueError:
            raise ParamError(resource.name, "ip", f"is not an IP address: {text!r}") from None
        full = 32 if self.address.version == 4 else 128
        self.prefix = p.integer("cidr_netmask", full, minimum=1)
        if self.prefix > full:
            raise ParamError(resource.name, "cidr_netmask", f"must be <= {full}")
        self.nic = p.text("nic")
        self.netns = p.netns
        self.label = p.opt("label")
        self.arp_count = p.integer("arp_count", ARP_COUNT)
        self.arping = p.text("arping", "arping")

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"

    def ip(self, *args: str) -> list[str]:
        ns = ["-n", self.netns] if self.netns else []
        return ["ip", *ns, *args]


class IpAgent:
    async def _addresses(self, spec: IpSpec, timeout: float) -> tuple[set[str] | None, str]:
        """(addresses on the device or None when it is missing, output)."""
        res = await run_process(spec.ip("-o", "addr", "show", "dev", spec.nic), timeout)
        if res.returncode != 0:
            return None, res.output
        found = set()
        for line in res.output.splitlines():
            words = line.split()
            for i, w in enumerate(words[:-1]):
                if w in ("inet", "inet6"):
                    found.add(words[i + 1].split("/", 1)[0])
        return found, res.output

    async def _up(self, spec: IpSpec, timeout: float) -> bool:
        """The device's link is UP (only a deep monitor asks: start and stop need not)."""
        link = await run_process(spec.ip("-o", "link", "show", "dev", spec.nic), timeout)
        flags = link.output.split("<", 1)[1].split(">", 1)[0] if "<" in link.output else ""
        return "UP" in flags.split(",")

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = IpSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        have, output = await self._addresses(spec, timeout)
        if have is None:
            return done(OcfCode.ERR_INSTALLED, t0, f"device {spec.nic} not found", output)
        if str(spec.address) not in have:
            cmd = spec.ip("addr", "add", spec.cidr, "dev", spec.nic)
            if spec.label:
                cmd += ["label", spec.label]
            if spec.address.version == 6:
                cmd.append("nodad")
            res = await run_process(cmd, max(0.5, timeout - (time.monotonic() - t0)))
            if res.timed_out or res.returncode != 0:
                return Outcome(
                    OcfCode.ERR_GENERIC,
                    time.monotonic() - t0,
                    res.output,
                    res.timed_out,
                    f"ip addr add {spec.cidr} dev {spec.nic} failed: {res.output.strip()[:200]}",
                )
        if spec.address.version == 4 and spec.arp_count > 0:
            self._announce(spec)
        return done(OcfCode.SUCCESS, t0)

    def _announce(self, spec: IpSpec) -> None:
        """Gratuitous ARP in the background (see the module docstring for why)."""
        vip = str(spec.address)
        argv = [
            *netns_prefix(spec.netns),
            spec.arping,
            "-U",
            "-c",
            str(spec.arp_count),
            "-i",
            spec.nic,
            "-S",
            vip,
            vip,
        ]

        async def arping() -> None:
            res = await run_process(argv, ARPING_LIMIT + spec.arp_count)
            if res.returncode is None:
                log.warning("%s: gratuitous ARP for %s: %s", spec.name, vip, res.error or "killed")
            else:
                log.debug("%s: arping %s exited %s", spec.name, vip, res.returncode)

        key = (spec.netns, spec.nic, vip)
        _cancel_announcements(key)
        task = asyncio.get_running_loop().create_task(arping())
        _announcing[key] = task
        _background.add(task)
        task.add_done_callback(_background.discard)
        task.add_done_callback(
            lambda t: _announcing.pop(key, None) if _announcing.get(key) is t else None
        )

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = IpSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        # No more announcements that the address is here: the next owner's would be undone.
        _cancel_announcements((spec.netns, spec.nic, str(spec.address)))
        have, _ = await self._addresses(spec, timeout)
        if have is None or str(spec.address) not in have:
            return done(OcfCode.SUCCESS, t0)  # a missing device holds no address
        res = await run_process(
            spec.ip("addr", "del", spec.cidr, "dev", spec.nic),
            max(0.5, timeout - (time.monotonic() - t0)),
        )
        if res.timed_out or res.returncode != 0:
            return Outcome(
                OcfCode.ERR_GENERIC,
                time.monotonic() - t0,
                res.output,
                res.timed_out,
                f"ip addr del {spec.cidr} dev {spec.nic} failed: {res.output.strip()[:200]}",
            )
        return done(OcfCode.SUCCESS, t0)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            spec = IpSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        have, output = await self._addresses(spec, timeout)
        if have is None:
            return done(OcfCode.ERR_GENERIC, t0, f"device {spec.nic} is gone", output)
        if str(spec.address) not in have:
            return done(OcfCode.NOT_RUNNING, t0, f"{spec.cidr} not on {spec.nic}")
        if resource.monitor_depth >= 10 and not await self._up(spec, timeout):
            return done(OcfCode.ERR_GENERIC, t0, f"{spec.nic} is down", output)
        return done(OcfCode.SUCCESS, t0)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            IpSpec(resource)
        except ParamError as exc:
            return config_error(exc, t0)
        return done(OcfCode.SUCCESS, t0)


async def drain_background(timeout: float = ARPING_LIMIT + 2) -> None:
    """Wait for background arpings (tests, shutdown)."""
    if _background:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*_background, return_exceptions=True), timeout)
