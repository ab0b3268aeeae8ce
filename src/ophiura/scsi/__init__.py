"""The SCSI command set (SPC-4 / SBC-3), free of any transport."""
