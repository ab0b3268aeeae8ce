"""Fixtures shared by the live replication tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .he_harness import SeHandle, spawn_ses


@pytest.fixture
async def ses(tmp_path: Path) -> AsyncIterator[list[SeHandle]]:
    """Three `ophiura se` subprocesses (default log size); a module may override it."""
    handles = await spawn_ses(tmp_path)
    try:
        yield handles
    finally:
        for h in handles:
            h.terminate()
