"""Persistent SCSI state (PR registrations/reservations, saved mode pages) replicated via the SEs.

Why: the SCSI layer keeps APTPL reservations and saved mode pages as small JSON files in its
`state_dir` (`lun0.pr.json`, `lun0.mode.json`). On one machine that is enough; after an HE
takeover the new HE has a fresh disk, and a reservation the host relies on (the cluster's data
fence) would silently vanish. So every volume NAME has a small companion volume `NAME.scsi` on
the same SEs, written by the same HE machinery (sequenced, quorum-acknowledged, recovered like
data), and a taking-over HE restores it into its state_dir before starting the SCSI target.

Layout of `NAME.scsi`: two slots of `SLOT_SIZE` bytes; generation g goes to slot g % 2, so a
torn write of one slot leaves the other intact. A slot is

    magic "OPHSCSI1" | generation u64 | length u32 | crc32c u32 | JSON {"files": {name: text}}

padded to the slot size. On restore the valid slot with the higher generation wins.

Persistent reservations are the data fence of the hosts above, so they are never polled:
the SCSI layer hands every change (every registration and reservation, APTPL or not) to
`save_pr` through `LogicalUnit.pr_store`, and the PR OUT command completes only once Q SEs hold
the new slot (a quorum-acknowledged write). A PREEMPT AND ABORT followed at once by an HE crash
is therefore never forgotten by the next HE. Saved mode pages, which protect no data, are still
written through by polling (every `interval`, default 0.1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
from pathlib import Path

import google_crc32c

from ophiura.block.device import BlockDevice, BlockDeviceError
from ophiura.scsi.logical_unit import LogicalUnit
from ophiura.scsi.pr_state import PrState

log = logging.getLogger(__name__)

MAGIC = b"OPHSCSI1"
_HEADER = struct.Struct(">8sQII")
SLOT_SIZE = 128 * 1024
META_SIZE = 2 * SLOT_SIZE
META_SUFFIX = ".scsi"
PR_FILE = "lun0.pr.json"
STATE_FILES = (PR_FILE, "lun0.mode.json")


class ScsiStateError(Exception):
    """The replicated SCSI state cannot be encoded, read or restored."""


def meta_volume_name(volume: str) -> str:
    return volume + META_SUFFIX


def is_meta_volume(name: str) -> bool:
    return name.endswith(META_SUFFIX)


def encode_slot(generation: int, files: dict[str, str]) -> bytes:
    payload = json.dumps({"files": files}, sort_keys=True).encode()
    if _HEADER.size + len(payload) > SLOT_SIZE:
        raise ScsiStateError(f"SCSI state of {len(payload)} bytes exceeds the {SLOT_SIZE} slot")
    crc = google_crc32c.value(payload)
    raw = _HEADER.pack(MAGIC, generation, len(payload), crc) + payload
    return raw + bytes(SLOT_SIZE - len(raw))


def decode_slot(raw: bytes) -> tuple[int, dict[str, str]] | None:
    """(generation, files) or None for an empty, torn or garbled slot."""
    if len(raw) < _HEADER.size:
        return None
    magic, generation, length, crc = _HEADER.unpack_from(raw)
    if magic != MAGIC or _HEADER.size + length > len(raw):
        return None
    payload = raw[_HEADER.size : _HEADER.size + length]
    if google_crc32c.value(payload) != crc:
        return None
    try:
        files = json.loads(payload)["files"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        return None
    return generation, files


def choose_slot(slots: list[tuple[int, dict[str, str]] | None]) -> tuple[int, dict[str, str]]:
    valid = [s for s in slots if s is not None]
    if not valid:
        return 0, {}
    return max(valid, key=lambda s: s[0])


def read_state_files(state_dir: Path, names: tuple[str, ...] = STATE_FILES) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        path = state_dir / name
        with contextlib.suppress(FileNotFoundError):
            out[name] = path.read_text()
    return out


def write_state_files(state_dir: Path, files: dict[str, str], names: tuple[str, ...]) -> None:
    """Make state_dir hold exactly `files` among `names` (atomic replace, fsync)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = state_dir / name
        if name in files:
            tmp = path.with_name(name + ".restore")
            with open(tmp, "w") as f:
                f.write(files[name])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class ScsiStateMirror:
    """Keeps `meta` (the `NAME.scsi` volume) equal to the SCSI state files of one target."""

    def __init__(
        self,
        meta: BlockDevice,
        state_dir: Path,
        *,
        names: tuple[str, ...] = STATE_FILES,
        interval: float = 0.1,
    ) -> None:
        self.meta = meta
        self.state_dir = state_dir
        self.names = names
        self.interval = interval
        self.generation = 0
        self.synced: dict[str, str] = {}
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()  # one slot write at a time: generations in order
        # files written through `save_pr` (hooked), never by the poll: the local file of a
        # hooked name is not what the SEs must hold
        self.hooked: set[str] = set()

    async def restore(self) -> dict[str, str]:
        """Read both slots from the SEs and write the newest state into state_dir."""
        try:
            raw = await self.meta.read(0, META_SIZE)
        except BlockDeviceError as exc:
            raise ScsiStateError(f"cannot read replicated SCSI state: {exc}") from exc
        generation, files = choose_slot(
            [decode_slot(bytes(raw[0:SLOT_SIZE])), decode_slot(bytes(raw[SLOT_SIZE:]))]
        )
        files = {k: v for k, v in files.items() if k in self.names}
        await asyncio.to_thread(write_state_files, self.state_dir, files, self.names)
        self.generation = generation
        self.synced = dict(files)
        if files:
            log.info(
                "restored SCSI state generation %d into %s: %s",
                generation,
                self.state_dir,
                ", ".join(sorted(files)),
            )
        return files

    async def sync_once(self) -> bool:
        """Write the files through if they changed; True when a new generation was written."""
        polled = tuple(n for n in self.names if n not in self.hooked)
        files = await asyncio.to_thread(read_state_files, self.state_dir, polled)
        async with self._write_lock:
            files.update({n: t for n, t in self.synced.items() if n in self.hooked})
            if files == self.synced:
                return False
            await self._write(files)
        return True

    def serve_pr(self, lu: LogicalUnit) -> None:
        """Make every PR change of `lu` go through `save_pr` (and no longer through the poll)."""
        self.hooked.add(PR_FILE)
        lu.pr_store = self.save_pr

    async def save_pr(self, state: PrState) -> None:
        """`LogicalUnit.pr_store`: the whole PR state on Q SEs before the command completes."""
        text = json.dumps(state.to_json(), sort_keys=True)
        async with self._write_lock:
            files = dict(self.synced)
            files[PR_FILE] = text
            await self._write(files)

    async def _write(self, files: dict[str, str]) -> None:
        generation = self.generation + 1
        slot = encode_slot(generation, files)
        await self.meta.write((generation % 2) * SLOT_SIZE, slot)
        self.generation = generation
        self.synced = files
        log.info("replicated SCSI state generation %d (%s)", generation, ", ".join(sorted(files)))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scsi-mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(BlockDeviceError, ScsiStateError, OSError):
            await self.sync_once()  # last changes, if the SEs still take writes

    async def _run(self) -> None:
        while True:
            try:
                await self.sync_once()
                self.last_error = None
            except (BlockDeviceError, ScsiStateError, OSError) as exc:
                if str(exc) != self.last_error:
                    log.error("cannot replicate SCSI state of %s: %s", self.state_dir, exc)
                self.last_error = str(exc)
            await asyncio.sleep(self.interval)
