"""`ophiura target show` for people: the status JSON (target_daemon.snapshot) as tables.

Per target: a header line (name, portal, ACL, CHAP), its LUNs, its sessions (initiator,
address, since) and, per LUN, the registrations and the reservation. `--json` prints the
snapshot itself; this module only lays it out.
"""

from __future__ import annotations

from typing import Any

from ophiura.sizes import format_size


def table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns wide enough for their longest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def render(state: dict[str, Any]) -> str:
    out = [f"ophiura target (pid {state['pid']}, up since {state['since']})"]
    if state.get("config"):
        out[0] += f" from {state['config']}"
    for t in state["targets"]:
        acl = "any initiator" if t["initiators"] is None else ", ".join(t["initiators"])
        out += ["", f"target {t['iqn']}  portal {t['portal']}  chap {t['chap']}", f"  acl: {acl}"]
        luns = [
            [
                str(lun["lun"]),
                format_size(lun["size"]),
                str(lun["block_size"]),
                ",".join(f for f, on in (("thin", lun["thin"]), ("ro", lun["read_only"])) if on)
                or "-",
                lun["nbd_export"] or "-",
                lun["serial"],
                lun["backing"],
            ]
            for lun in t["luns"]
        ]
        out += table(["LUN", "SIZE", "BLOCK", "FLAGS", "NBD", "SERIAL", "BACKING"], luns)
        sessions = [
            [s["initiator"], s["address"] or "-", s["since"], s["isid"]] for s in t["sessions"]
        ]
        if sessions:
            out += table(["INITIATOR", "ADDRESS", "SINCE", "ISID"], sessions)
        else:
            out.append("  no sessions")
        rows = []
        for lun in t["luns"]:
            res = lun["reservation"]
            for reg in res["registrations"]:
                holds = res["holder"] in (reg["initiator_port"], "all-registrants")
                rows.append(
                    [
                        str(lun["lun"]),
                        reg["key"],
                        reg["initiator_port"],
                        res["type"] if holds else "-",
                        "yes" if res["aptpl"] else "no",
                    ]
                )
            if res["spc2_holder"]:
                rows.append([str(lun["lun"]), "-", res["spc2_holder"], "RESERVE(6/10)", "no"])
        if rows:
            out += table(["LUN", "KEY", "REGISTERED INITIATOR PORT", "RESERVATION", "APTPL"], rows)
        else:
            out.append("  no registrations or reservations")
    if state.get("nbd"):
        nbd = state["nbd"]
        names = ", ".join(f"{e['name']} ({e['target']} LUN {e['lun']})" for e in nbd["exports"])
        out += ["", f"nbd {nbd['listen']}: {names or 'no exports'}"]
    return "\n".join(out)
