"""`ophiura demo --target`: a tour of the SCSI target on one machine, narrated.

Starts `ophiura target` on a sparse file on 127.0.0.1, shows the LUN with libiscsi's tools when
installed (else with ophiura's own initiator), writes and reads back data, has two initiators
(two cluster nodes) take, see and break a persistent reservation, and stops the target cleanly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ophiura.iscsi import pr_client as pr
from ophiura.iscsi.initiator import IscsiInitiator
from ophiura.pr_tool import stable_isid, type_name
from ophiura.scsi.api import Status
from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import stop, wait_port

IQN = "iqn.2026-11.io.ophiura:demo"
NODE_A = "iqn.2026-11.io.ophiura:node-a"
NODE_B = "iqn.2026-11.io.ophiura:node-b"


def say(text: str) -> None:
    print(text, flush=True)


def show_with_libiscsi(url: str, portal: str) -> bool:
    if not (shutil.which("iscsi-inq") and shutil.which("iscsi-ls")):
        return False
    for cmd in (
        ["iscsi-ls", "-s", f"iscsi://{portal}"],
        ["iscsi-inq", url],
        ["iscsi-inq", "-e", "1", "-c", "128", url],
    ):
        say(f"$ {' '.join(cmd)}")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        say("  " + (out.stdout + out.stderr).strip().replace("\n", "\n  "))
    return True


async def node(name: str, port: int) -> IscsiInitiator:
    ini = await IscsiInitiator.connect("127.0.0.1", port, IQN, name, isid=stable_isid(name))
    await ini.test_unit_ready()  # consume the POWER ON unit attention every new nexus sees
    return ini


async def exercise(port: int) -> None:
    a = await node(NODE_A, port)
    b = await node(NODE_B, port)
    try:
        std = await a.inquiry()
        blocks, block_size = await a.read_capacity16()
        say(
            f"node-a sees {std[8:16].decode().strip()} {std[16:32].decode().strip()}, "
            f"{blocks} blocks of {block_size} bytes"
        )
        payload = os.urandom(64 * 1024)
        await a.write(2048, payload, block_size=block_size)
        back = await b.read(2048, len(payload) // block_size, block_size=block_size)
        say(
            f"node-a wrote 64 KiB at LBA 2048; node-b read it back: "
            f"{'identical' if back == payload else 'DIFFERENT'}"
        )
        if back != payload:
            raise RuntimeError("read-back mismatch")

        say("\nPersistent reservations (the cluster's data fence):")
        await a.persistent_reserve_out(pr.PrOut.REGISTER, sa_key=0xA)
        await b.persistent_reserve_out(pr.PrOut.REGISTER, sa_key=0xB)
        await a.persistent_reserve_out(pr.PrOut.RESERVE, key=0xA, pr_type=pr.PrType.WRITE_EXCLUSIVE)
        keys = await b.persistent_reserve_in(pr.PrIn.READ_KEYS)
        res = await b.persistent_reserve_in(pr.PrIn.READ_RESERVATION)
        say(
            f"  registered keys: {[hex(k) for k in keys.keys]}; "
            f"reservation: key {hex(res.key)} {type_name(res.type)}"
        )
        result = await b.scsi(0, b"\x2a" + bytes(6) + b"\x00\x01\x00", data_out=bytes(block_size))
        conflict = result.status == Status.RESERVATION_CONFLICT
        outcome = "RESERVATION CONFLICT" if conflict else f"status 0x{result.status:02x}"
        say(f"  node-b WRITE while node-a holds it: {outcome}")
        say("  node-a is declared dead; node-b breaks its reservation (PREEMPT AND ABORT):")
        await b.persistent_reserve_out(
            pr.PrOut.PREEMPT_AND_ABORT, key=0xB, sa_key=0xA, pr_type=pr.PrType.WRITE_EXCLUSIVE
        )
        res = await b.persistent_reserve_in(pr.PrIn.READ_RESERVATION)
        full = await b.persistent_reserve_in(pr.PrIn.READ_FULL_STATUS)
        for entry in full.entries:
            role = "holder" if entry.holder else "registrant"
            say(f"    {entry.initiator}: key {hex(entry.key)} ({role})")
        say(f"  reservation now: key {hex(res.key)} {type_name(res.type)}")
        fenced = await a.scsi(0, b"\x2a" + bytes(6) + b"\x00\x01\x00", data_out=bytes(block_size))
        say(
            f"  node-a (fenced) tries to write: status 0x{fenced.status:02x}"
            f" {'(unit attention: registrations preempted)' if fenced.status == 2 else ''}"
        )
        await b.persistent_reserve_out(pr.PrOut.CLEAR, key=0xB)
    finally:
        for ini in (a, b):
            await ini.logout()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ophiura-demo-") as tmp:
        backing = Path(tmp) / "disk0.img"
        port = free_port()
        portal = f"127.0.0.1:{port}"
        url = f"iscsi://{portal}/{IQN}/0"
        cmd = [
            sys.executable,
            "-m",
            "ophiura.cli",
            "target",
            "--backing",
            str(backing),
            "--size",
            "256M",
            "--thin",
            "--listen",
            portal,
            "--iqn",
            IQN,
        ]
        say(f"$ ophiura target --backing {backing} --size 256M --thin --listen {portal}")
        log_path = Path(tmp) / "target.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=log)
        try:
            wait_port(port, 15.0, proc)
            say(
                f"target up: {url} (backing file uses {backing.stat().st_blocks * 512} bytes "
                f"of {backing.stat().st_size})\n"
            )
            if not show_with_libiscsi(url, portal):
                say("(libiscsi-bin not installed: using ophiura's own initiator)")
            asyncio.run(exercise(port))
        except BaseException:
            say(f"--- target log ---\n{log_path.read_text(errors='replace')}")
            raise
        finally:
            code = stop(proc, timeout=20)
        say(f"\ntarget stopped cleanly (exit {code})" if code == 0 else f"target exit {code}")
        return 1 if code is None else code


if __name__ == "__main__":
    raise SystemExit(main())
