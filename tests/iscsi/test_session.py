from __future__ import annotations

from ophiura.iscsi.session import DELIVER, DROP, QUEUED, CmdWindow, make_nexus, sn_diff


def test_in_order_delivery_and_window() -> None:
    w = CmdWindow(0xFFFFFFFE, depth=4)
    assert w.max_cmdsn == 1  # wraps
    assert w.accept(0xFFFFFFFE, "a") == (DELIVER, ["a"])
    assert w.accept(0, "c") == (QUEUED, [])
    assert w.accept(0xFFFFFFFF, "b") == (DELIVER, ["b", "c"])
    assert w.exp == 1


def test_out_of_window_dropped() -> None:
    w = CmdWindow(100, depth=4)
    assert w.accept(99, "low")[0] == DROP  # CmdSN < ExpCmdSN
    assert w.accept(104, "high")[0] == DROP  # > MaxCmdSN (103)
    assert w.accept(103, "edge")[0] == QUEUED
    assert w.accept(103, "dup")[0] == DROP


def test_max_cmdsn_closes_with_inflight_and_never_decreases() -> None:
    w = CmdWindow(10, depth=4)
    w.accept(10, "x")
    w.inflight = 1
    assert w.max_cmdsn == 13
    w.inflight = 4
    assert w.max_cmdsn == 13  # never moves back
    w.inflight = 0
    assert w.max_cmdsn == 14


def test_serial_arithmetic_and_nexus() -> None:
    assert sn_diff(1, 0xFFFFFFFF) == 2 and sn_diff(0xFFFFFFFF, 1) == -2
    n = make_nexus("iqn.i", 0x23D000000001, "iqn.t", 1)
    assert n.initiator_port == "iqn.i,i,0x23d000000001"
    assert n.target_port == "iqn.t,t,0x0001" and n.isid == "0x23d000000001"
