"""Block backends: what the SCSI layer reads and writes, seen only as a BlockDevice."""

from ophiura.block.device import BlockDevice, BlockDeviceError, MediumError, NoSpaceError

__all__ = ["BlockDevice", "BlockDeviceError", "MediumError", "NoSpaceError"]
