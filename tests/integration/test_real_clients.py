"""Real initiators against `ophiura target` ("Must show" item 3), and the same checks against
tgtd so that the tests themselves are known to be right.

libiscsi's utilities (iscsi-inq, iscsi-ls, iscsi-readcapacity16) and qemu's iSCSI block driver
(qemu-img, qemu-io) each log in, run their commands and log out; each call is bounded by a
timeout. CHAP: the right secret works, a wrong secret or none is refused at login.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from bench.servers import Server, size_bytes

from .harness import CHAP, DEFAULT_SIZE, TargetFactory, require_tools, tool_output

TOOL_TIMEOUT = 60
SIZE = size_bytes(DEFAULT_SIZE)
KINDS = ["ophiura", "ophiura-thin", "tgtd"]


def run(*args: str, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    require_tools(args[0])
    try:
        return subprocess.run(
            args, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish in {timeout} s: {exc.stdout!r}")


def ok(*args: str) -> str:
    result = run(*args)
    assert result.returncode == 0, f"{' '.join(args)}\n{tool_output(result)}"
    return result.stdout


@pytest.fixture(scope="module", params=KINDS)
def target(request: pytest.FixtureRequest, module_targets: TargetFactory) -> Server:
    kind = request.param
    if kind == "ophiura":
        return request.getfixturevalue("ophiura_thick")
    if kind == "ophiura-thin":
        return request.getfixturevalue("ophiura_thin")
    return request.getfixturevalue("tgtd_target")


@pytest.fixture(scope="module", params=["ophiura", "tgtd"])
def chap_target(request: pytest.FixtureRequest, module_targets: TargetFactory) -> Server:
    return module_targets(request.param, chap=CHAP)


def block_geometry(server: Server) -> tuple[int, int, str]:
    """(block length, number of blocks, full output) from iscsi-readcapacity16."""
    out = ok("iscsi-readcapacity16", server.url())
    last_lba = int(re.search(r"RETURNED LOGICAL BLOCK ADDRESS:(\d+)", out).group(1))
    block = int(re.search(r"LOGICAL BLOCK LENGTH IN BYTES:(\d+)", out).group(1))
    return block, last_lba + 1, out


def test_inquiry_standard(target: Server) -> None:
    out = ok("iscsi-inq", target.url())
    assert "Peripheral Qualifier:CONNECTED" in out, out
    assert "Peripheral Device Type:DIRECT_ACCESS" in out, out
    assert re.search(r"^Vendor:\S", out, re.M), out
    assert re.search(r"^Product:\S", out, re.M), out


def test_inquiry_supported_vpd_pages(target: Server) -> None:
    out = ok("iscsi-inq", "-e", "1", "-c", "0", target.url())
    for page in ("0x00", "0x80", "0x83"):
        assert f"Page:{page} " in out, out


def test_inquiry_vpd_unit_serial(target: Server) -> None:
    out = ok("iscsi-inq", "-e", "1", "-c", str(0x80), target.url())
    match = re.search(r"Unit Serial Number:\[(.*)\]", out)
    assert match and match.group(1).strip(), out


def test_inquiry_vpd_device_identification(target: Server) -> None:
    out = ok("iscsi-inq", "-e", "1", "-c", str(0x83), target.url())
    assert "Page Code:(0x83) DEVICE_IDENTIFICATION" in out, out
    assert "Designator Type:(3) NAA" in out, out
    assert "Association:(0) LOGICAL_UNIT" in out, out


def test_readcapacity16(target: Server) -> None:
    block, blocks, out = block_geometry(target)
    assert block in (512, 4096), out
    assert blocks * block == SIZE, out
    assert f"Total size:{SIZE}" in out, out
    if target.kind == "ophiura":  # thin LUNs announce logical block provisioning
        assert f"LBPME:{1 if target.thin else 0}" in out, out


def test_iscsi_ls_shows_target_and_lun(target: Server) -> None:
    out = ok("iscsi-ls", "-s", f"iscsi://{target.portal}")
    assert f"Target:{target.iqn} Portal:{target.portal}" in out, out
    # iscsi-ls prints READ CAPACITY(10)'s last LBA times the block length, floor-divided by 1024.
    block, blocks, _ = block_geometry(target)
    size, unit = (blocks - 1) * block, 0
    while unit < 4 and size > 1024:
        size, unit = size // 1024, unit + 1
    expected = f"Lun:{target.lun:<4} Type:DIRECT_ACCESS (Size:{size}{' KMGT'[unit]})"
    assert expected in out, f"expected {expected!r} in\n{out}"


def test_qemu_img_info(target: Server) -> None:
    out = ok("qemu-img", "info", target.url())
    assert f"virtual size: 64 MiB ({SIZE} bytes)" in out, out


def test_qemu_io_write_read_verify(target: Server) -> None:
    last = SIZE - (1 << 20)
    ok(
        "qemu-io", "-f", "raw", target.url(),
        "-c", "write -P 0xab 0 1M",
        "-c", f"write -P 0xcd {last} 1M",
        "-c", "write -P 0x5a 1048064 1024",  # straddles a 1 MiB boundary, 512-aligned
        "-c", "read -P 0xab 0 1048064",
        "-c", "read -P 0x5a 1048064 1024",
        "-c", f"read -P 0xcd {last} 1M",
    )  # fmt: skip
    # and from a fresh session: the data is on the target, not in a client cache
    ok("qemu-io", "-f", "raw", target.url(), "-c", f"read -P 0xcd {last} 1M")
    # the pattern check is real: a wrong pattern must be reported
    result = run("qemu-io", "-f", "raw", target.url(), "-c", "read -P 0xab 1048576 4096")
    assert result.returncode != 0 or "Pattern verification failed" in result.stdout, tool_output(
        result
    )


def test_chap_right_secret(chap_target: Server) -> None:
    user, secret = CHAP
    out = ok("iscsi-inq", chap_target.url(user, secret))
    assert "Peripheral Device Type:DIRECT_ACCESS" in out, out
    ok("qemu-io", "-f", "raw", chap_target.url(user, secret), "-c", "write -P 0x11 0 64k",
       "-c", "read -P 0x11 0 64k")  # fmt: skip


def test_chap_wrong_secret_refused(chap_target: Server) -> None:
    user, _ = CHAP
    result = run("iscsi-inq", chap_target.url(user, "wrong-secret-123"))
    assert result.returncode != 0, tool_output(result)
    assert "Peripheral Device Type" not in result.stdout, tool_output(result)


def test_chap_no_credentials_refused(chap_target: Server) -> None:
    result = run("iscsi-inq", chap_target.url())
    assert result.returncode != 0, tool_output(result)
    assert "Peripheral Device Type" not in result.stdout, tool_output(result)
    assert chap_target.alive(), "the target died after a refused login"
