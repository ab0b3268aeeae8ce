"""Mode pages of one logical unit: one set shared by every initiator (HA profile 4.6, 4.8).

Each page is kept as bytes (page code, page length, parameters) in three copies: current,
saved and default, plus a mask of the bits MODE SELECT may change. MODE SELECT is validated in
full before anything changes, so a bad parameter list changes nothing, and the caller learns
whether something did change (to raise MODE PARAMETERS CHANGED on the other nexuses).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ophiura.scsi.constants import Asc, SenseKey
from ophiura.scsi.sense import CheckCondition, invalid_cdb, invalid_param, param_list_length_error

log = logging.getLogger(__name__)

RW_ERROR_RECOVERY = 0x01
DISCONNECT_RECONNECT = 0x02
CACHING = 0x08
CONTROL = 0x0A
INFORMATIONAL_EXCEPTIONS = 0x1C
ALL_PAGES = 0x3F

# Page control (PC) field of MODE SENSE.
PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3


def _page(code: int, body: bytes) -> bytes:
    return bytes((code, len(body))) + body


_DEFAULTS: dict[int, bytes] = {
    # AWRE|ARRE set: the backend remaps on its own; no retries to configure.
    RW_ERROR_RECOVERY: _page(RW_ERROR_RECOVERY, bytes((0xC0,)) + bytes(9)),
    DISCONNECT_RECONNECT: _page(DISCONNECT_RECONNECT, bytes(14)),
    # WCE=1: completed writes may sit in the backend's cache until SYNCHRONIZE CACHE.
    CACHING: _page(CACHING, bytes((0x04,)) + bytes(17)),
    # QAM=1 (unrestricted reordering), busy timeout unlimited (FFFFh).
    CONTROL: _page(CONTROL, bytes((0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00))),
    # DEXCPT=1: informational exception reporting disabled.
    INFORMATIONAL_EXCEPTIONS: _page(INFORMATIONAL_EXCEPTIONS, bytes((0x08,)) + bytes(9)),
}

# Bits an application client may change (the "changeable values" page).
_CHANGEABLE: dict[int, bytes] = {
    RW_ERROR_RECOVERY: _page(RW_ERROR_RECOVERY, bytes(10)),
    DISCONNECT_RECONNECT: _page(DISCONNECT_RECONNECT, bytes(14)),
    CACHING: _page(CACHING, bytes((0x04,)) + bytes(17)),  # WCE
    CONTROL: _page(CONTROL, bytes((0x04, 0x00, 0x08, 0x40)) + bytes(6)),  # D_SENSE, SWP, TAS
    INFORMATIONAL_EXCEPTIONS: _page(INFORMATIONAL_EXCEPTIONS, bytes(10)),
}

PAGE_ORDER = (RW_ERROR_RECOVERY, DISCONNECT_RECONNECT, CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS)


class ModePages:
    """Current, saved and default mode pages of one LU, optionally persisted (saved copy)."""

    def __init__(self, save_path: Path | None = None) -> None:
        self._save_path = save_path
        self.saved: dict[int, bytearray] = {c: bytearray(p) for c, p in _DEFAULTS.items()}
        if save_path is not None and save_path.exists():
            self._load_saved(save_path)
        self.current: dict[int, bytearray] = {c: bytearray(p) for c, p in self.saved.items()}
        self._refresh()

    # -- fast accessors, read on every command ------------------------------------------------

    def _refresh(self) -> None:
        control = self.current[CONTROL]
        self.d_sense = bool(control[2] & 0x04)
        self.swp = bool(control[4] & 0x08)
        self.tas = bool(control[5] & 0x40)
        self.wce = bool(self.current[CACHING][2] & 0x04)

    def reset_to_saved(self) -> None:
        """LOGICAL UNIT RESET / target reset: current values return to the saved ones."""
        self.current = {c: bytearray(p) for c, p in self.saved.items()}
        self._refresh()

    # -- MODE SENSE ---------------------------------------------------------------------------

    def pages(self, pc: int, page_code: int, subpage: int) -> bytes:
        """The page(s) a MODE SENSE CDB asks for (page code byte 2, subpage byte 3)."""
        if pc == PC_CHANGEABLE:
            source: dict[int, bytes] | dict[int, bytearray] = _CHANGEABLE
        elif pc == PC_DEFAULT:
            source = _DEFAULTS
        elif pc == PC_SAVED:
            source = self.saved
        else:
            source = self.current
        if page_code == ALL_PAGES:
            if subpage not in (0x00, 0xFF):
                raise invalid_cdb(3)
            return b"".join(bytes(source[c]) for c in PAGE_ORDER)
        if page_code not in source:
            raise invalid_cdb(2, 5)
        if subpage not in (0x00, 0xFF):
            raise invalid_cdb(3)
        return bytes(source[page_code])

    # -- MODE SELECT --------------------------------------------------------------------------

    def select(self, pages: bytes, offset: int, save: bool) -> bool:
        """Apply the page list of a MODE SELECT parameter list; True if anything changed.

        `offset` is where `pages` starts in the parameter list, for field pointers.
        """
        staged: dict[int, bytearray] = {}
        pos = 0
        while pos < len(pages):
            here = offset + pos
            if len(pages) - pos < 2:
                raise param_list_length_error()
            code = pages[pos] & 0x3F
            if pages[pos] & 0x40:  # SPF: we have no subpages
                raise invalid_param(here, 6)
            if code not in self.current:
                raise invalid_param(here, 5)
            length = pages[pos + 1]
            if length != len(self.current[code]) - 2:
                raise invalid_param(here + 1)
            if pos + 2 + length > len(pages):
                raise param_list_length_error()
            new = bytearray(pages[pos : pos + 2 + length])
            new[0] = code  # PS is reserved in MODE SELECT; ignore it
            mask = _CHANGEABLE[code]
            base = staged.get(code, self.current[code])
            for i in range(2, len(new)):
                if (new[i] ^ base[i]) & ~mask[i] & 0xFF:
                    raise invalid_param(here + i)
            staged[code] = new
            pos += 2 + length
        changed = False
        for code, new in staged.items():
            if new != self.current[code]:
                changed = True
                self.current[code] = new
        if save:
            self._save(staged)
        self._refresh()
        return changed

    def _save(self, staged: dict[int, bytearray]) -> None:
        for code, page in staged.items():
            self.saved[code] = bytearray(page)
        if self._save_path is None:
            return
        data = {f"{code:02x}": page.hex() for code, page in self.saved.items()}
        tmp = self._save_path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._save_path)
        except OSError as exc:
            log.error("cannot save mode pages to %s: %s", self._save_path, exc)
            raise CheckCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE) from exc

    def _load_saved(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            for key, value in data.items():
                code, page = int(key, 16), bytearray.fromhex(value)
                if code in _DEFAULTS and len(page) == len(_DEFAULTS[code]):
                    self.saved[code] = page
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable saved mode pages %s: %s", path, exc)
