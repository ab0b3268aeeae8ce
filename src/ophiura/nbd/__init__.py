"""NBD newstyle-fixed server (and a small client) for any BlockDevice.

`protocol` is the sans-I/O core (handshake, option haggling, request decoding), `commands` runs
requests against a BlockDevice, `server` and `client` move the bytes with asyncio.
"""

from ophiura.nbd.client import NbdClient, NbdClientError, NbdError, NbdOptionError
from ophiura.nbd.protocol import ExportInfo, NbdProtocolError, ServerConnection
from ophiura.nbd.server import NbdServer

__all__ = [
    "ExportInfo",
    "NbdClient",
    "NbdClientError",
    "NbdError",
    "NbdOptionError",
    "NbdProtocolError",
    "NbdServer",
    "ServerConnection",
]
