"""Quorate mode's tie-breaker: a SCSI-3 persistent reservation on a quorum LUN.

`ophiura cluster tie-breaker --url LUN --node NAME --state FILE` is a `[cluster] tie_breaker`
command: exit 0 when this node holds the quorum LUN's reservation, 1 when it does not. The daemon
asks it at most once a second, and only while exactly half the votes are present, so in a
partition into halves both halves ask. A plain "reserve if free" would keep a dead holder's
reservation forever; a plain PREEMPT would let both halves take it from each other every second.
So, as the classic quorum-disk arbitration (challenge and defense):

- nobody holds it: RESERVE, and we win;
- we hold it: re-REGISTER our key (SPC-4 bumps PRgeneration: a proof of life), and we win;
- another key holds it: remember PRgeneration (in FILE: each ask is a new process). A live holder
  in the same tie refreshes every second; if PRgeneration has not moved for `challenge` seconds
  (default 3, over two refreshes), the holder is dead or cut off from the LUN too: PREEMPT AND
  ABORT its key, and we win. Otherwise we lose.

The key, initiator name and I_T nexus are the `volume` agent's for `node` (volume.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from ophiura.cluster.agents.base import Resource
from ophiura.cluster.agents.volume import VolumeError, VolumeSpec, _Session
from ophiura.iscsi import pr_client as pr
from ophiura.iscsi.initiator import IscsiError


async def arbitrate(
    url: str, node: str, state: Path, challenge: float = 3.0, timeout: float = 5.0
) -> tuple[bool, str]:
    """(we hold the quorum LUN now, why)."""
    spec = VolumeSpec.of(Resource("quorum", "volume", params={"url": url, "node": node}))
    try:
        async with asyncio.timeout(timeout), _Session(spec, timeout) as s:
            assert s.ini is not None
            v = await s.view()
            if not v.ours_here:
                await s.out("REGISTER", pr.PrOut.REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=spec.key)
            if v.held_by_us(spec):
                if v.ours_here:  # refresh: the challenger sees PRgeneration move
                    await s.out(
                        "REGISTER", pr.PrOut.REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=spec.key
                    )
                state.unlink(missing_ok=True)
                return True, "held: refreshed"
            if v.holder_key is None:
                await s.out("RESERVE", pr.PrOut.RESERVE, key=spec.key, pr_type=spec.pr_type)
                ok = (await s.view()).held_by_us(spec)
                return ok, "reserved" if ok else "lost the race to reserve"
            full = await s.ini.persistent_reserve_in(pr.PrIn.READ_FULL_STATUS, s.lun)
            gen, now = full.generation, time.monotonic()
            seen = _read(state)
            if seen.get("holder") != v.holder_key or seen.get("generation") != gen:
                _write(state, {"holder": v.holder_key, "generation": gen, "since": now})
                return False, f"held by key 0x{v.holder_key:x} (generation {gen}): challenging"
            quiet = now - float(seen["since"])
            if quiet < challenge:
                return False, f"held by key 0x{v.holder_key:x}, silent for {quiet:.1f} s"
            await s.out(
                "PREEMPT AND ABORT",
                pr.PrOut.PREEMPT_AND_ABORT,
                key=spec.key,
                sa_key=v.holder_key,
                pr_type=spec.pr_type,
            )
            state.unlink(missing_ok=True)
            ok = (await s.view()).held_by_us(spec)
            why = f"key 0x{v.holder_key:x} silent for {quiet:.1f} s: preempted"
            return ok, why if ok else f"{why}, but the reservation is not ours"
    except TimeoutError:
        return False, f"{url}: no answer within {timeout:g} s"
    except (VolumeError, IscsiError, OSError) as exc:
        return False, f"{url}: {exc}"


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
