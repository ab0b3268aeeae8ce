"""Persistent reservation state of one logical unit, and its APTPL file.

The state is an immutable value: PERSISTENT RESERVE OUT computes a new one (see pr_out.py), makes
it durable when APTPL asks for it, and only then swaps it in. Readers (every command's conflict
check) therefore see either the old or the new state, never half of one, and a state that was
reported GOOD is on disk before the initiator hears so (write temp, fsync, rename, fsync dir).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ophiura.scsi.api import Nexus
from ophiura.scsi.constants import PrType
from ophiura.scsi.identity import normalize_port


@dataclass(frozen=True)
class Registration:
    """One registered I_T nexus, or with all_tg_pt every target port of one initiator port."""

    key: int
    initiator_port: str  # normalized (identity.normalize_port)
    target_port: str | None  # None: registered through all target ports (ALL_TG_PT=1)
    relative_target_port_id: int

    @property
    def ident(self) -> tuple[str, str | None]:
        return (self.initiator_port, self.target_port)

    def covers(self, nexus: Nexus) -> bool:
        if normalize_port(nexus.initiator_port) != self.initiator_port:
            return False
        return self.target_port is None or self.target_port == normalize_port(nexus.target_port)


@dataclass(frozen=True)
class PrState:
    generation: int = 0
    registrations: tuple[Registration, ...] = ()
    res_type: PrType | None = None
    holder: tuple[str, str | None] | None = None  # ident of the holder; None for all-registrants
    aptpl: bool = False
    _index: dict[tuple[str, str | None], Registration] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        self._index.update({r.ident: r for r in self.registrations})

    def lookup(self, nexus: Nexus) -> Registration | None:
        """The registration of this I_T nexus (exact target port first, then ALL_TG_PT)."""
        if not self._index:
            return None
        port = normalize_port(nexus.initiator_port)
        return self._index.get((port, normalize_port(nexus.target_port))) or self._index.get(
            (port, None)
        )

    def is_holder(self, reg: Registration | None) -> bool:
        if reg is None or self.res_type is None:
            return False
        if self.res_type.all_registrants:
            return True
        return self.holder == reg.ident

    def holder_registration(self) -> Registration | None:
        if self.holder is None:
            return None
        return self._index.get(self.holder)

    def with_changes(self, **changes: object) -> PrState:
        return replace(self, _index={}, **changes)  # type: ignore[arg-type]

    # -- (de)serialization ------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "version": 1,
            "generation": self.generation,
            "aptpl": self.aptpl,
            "registrations": [
                {
                    "key": r.key,
                    "initiator_port": r.initiator_port,
                    "target_port": r.target_port,
                    "relative_target_port_id": r.relative_target_port_id,
                }
                for r in self.registrations
            ],
            "reservation": None
            if self.res_type is None
            else {
                "type": int(self.res_type),
                "holder": None if self.holder is None else list(self.holder),
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PrState:
        if data.get("version") != 1:
            raise ValueError(f"unknown PR state version {data.get('version')!r}")
        regs = tuple(
            Registration(
                key=int(r["key"]),
                initiator_port=str(r["initiator_port"]),
                target_port=None if r["target_port"] is None else str(r["target_port"]),
                relative_target_port_id=int(r["relative_target_port_id"]),
            )
            for r in data["registrations"]  # type: ignore[union-attr]
        )
        res = data.get("reservation")
        res_type = None
        holder = None
        if res is not None:
            res_type = PrType(int(res["type"]))  # type: ignore[index]
            h = res["holder"]  # type: ignore[index]
            holder = None if h is None else (str(h[0]), None if h[1] is None else str(h[1]))
        return cls(
            generation=int(data["generation"]),  # type: ignore[arg-type]
            registrations=regs,
            res_type=res_type,
            holder=holder,
            aptpl=bool(data.get("aptpl", True)),
        )


class PrStateError(Exception):
    """The APTPL file exists but cannot be read: refusing to start without a fence we owe."""


def load(path: Path) -> PrState | None:
    if not path.exists():
        return None
    try:
        return PrState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrStateError(f"cannot restore persistent reservations from {path}: {exc}") from exc


def save(path: Path, state: PrState) -> None:
    """Atomically replace the APTPL file (or remove it when APTPL is off); durable on return."""
    directory = path.parent
    if state.aptpl:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    elif path.exists():
        path.unlink()
    else:
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
