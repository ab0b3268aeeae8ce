"""Per-volume durable metadata: the paper's NVRAM (highest applied sequence, epoch, size).

Two slots of 4 KiB, written alternately, each with a generation counter and a CRC32C. An update
goes to the slot not holding the newest generation and is fdatasync'd before anything that
depends on it is acknowledged; a crash mid-write can only tear that slot, and the other one still
holds the previous state. On load the valid slot with the highest generation wins; a torn or
garbled slot fails its checksum and is ignored, never trusted.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c

from ophiura.replication.se import disk_io

log = logging.getLogger(__name__)

SLOT_SIZE = 4096
_MAGIC = b"OPHMETA1"
_HEAD = struct.Struct("<8sQII")  # magic, generation, crc32c, payload length


class MetadataError(Exception):
    """No valid metadata slot, or the metadata file cannot be written."""


@dataclass
class VolumeMeta:
    """Everything an SE must remember about a volume across a crash."""

    size: int
    block_size: int
    epoch: int = 0
    he_id: int = 0  # the ballot is (epoch, he_id): the owner this SE obeys
    base_seq: int = 0  # the ballot's base once established (protocol NO_BASE: only claimed)
    applied_seq: int = 0  # every write <= this is durable here (data file or replay log)
    data_synced_seq: int = 0  # log records <= this are durably in the data file too
    # the ballot [epoch, he_id] that wrote seq data_synced_seq ([0, 0]: unknown): what the SE
    # reports as its top ballot when the log no longer holds that record
    synced_ballot: list[int] = field(default_factory=lambda: [0, 0])
    recovery: dict[str, Any] | None = None  # kind, upto, peer, cursor: resumable recovery
    generation: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _encode(meta: VolumeMeta) -> bytes:
    doc = asdict(meta)
    doc.pop("generation")
    payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    if _HEAD.size + len(payload) > SLOT_SIZE:
        raise MetadataError(f"metadata of {len(payload)} bytes does not fit a {SLOT_SIZE} slot")
    crc = google_crc32c.value(struct.pack("<Q", meta.generation) + payload)
    slot = _HEAD.pack(_MAGIC, meta.generation, crc, len(payload)) + payload
    return slot + bytes(SLOT_SIZE - len(slot))


def decode_slot(raw: bytes) -> VolumeMeta | None:
    """The metadata in one slot, or None if it is empty, torn or garbled."""
    if len(raw) < _HEAD.size:
        return None
    magic, gen, crc, n = _HEAD.unpack_from(raw, 0)
    if magic != _MAGIC or _HEAD.size + n > len(raw):
        return None
    payload = raw[_HEAD.size : _HEAD.size + n]
    if google_crc32c.value(struct.pack("<Q", gen) + payload) != crc:
        return None
    try:
        doc = json.loads(payload)
        return VolumeMeta(generation=gen, **doc)
    except (ValueError, TypeError):
        return None


class MetadataFile:
    """The two-slot file. Blocking calls: run them off the event loop."""

    def __init__(self, path: Path, fd: int, current: VolumeMeta) -> None:
        self.path = path
        self._fd = fd
        self.current = current
        self._generation = current.generation

    @classmethod
    def create(cls, path: Path, meta: VolumeMeta) -> MetadataFile:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self = cls(path, fd, meta)
        self._generation = -1
        self.write(meta)
        return self

    @classmethod
    def load(cls, path: Path) -> MetadataFile:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise MetadataError(f"cannot open metadata {path}: {exc.strerror or exc}") from exc
        slots = [decode_slot(os.pread(fd, SLOT_SIZE, i * SLOT_SIZE)) for i in (0, 1)]
        valid = [s for s in slots if s is not None]
        if not valid:
            os.close(fd)
            raise MetadataError(f"{path}: neither metadata slot is valid (both torn or garbled)")
        best = max(valid, key=lambda m: m.generation)
        if len(valid) == 1:
            log.warning(
                "%s: one metadata slot is torn or garbled; using generation %d",
                path,
                best.generation,
            )
        return cls(path, fd, best)

    def write(self, meta: VolumeMeta) -> None:
        """Durably replace the older slot with `meta` (its generation is bumped here)."""
        self._generation += 1
        meta.generation = self._generation
        slot = _encode(meta)
        disk_io.pwrite(self._fd, slot, (meta.generation % 2) * SLOT_SIZE)
        disk_io.fdatasync(self._fd)
        self.current = meta

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
