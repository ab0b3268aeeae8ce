"""Placeholder, replaced below."""

from __future__ import annotations

from typing import Any


class RecoveryManager:
    def __init__(self, se: Any) -> None:
        self.se = se

    async def start(self, vol: Any, msg: Any) -> None:
        from ophiura.replication.se_store import VolumeError

        raise VolumeError("recovery not implemented yet")

    async def reload(self, vol: Any) -> None:
        return None

    async def forget(self, vol: Any) -> None:
        return None

    async def stop(self) -> None:
        return None
