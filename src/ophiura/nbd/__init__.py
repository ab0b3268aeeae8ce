"""NBD newstyle-fixed server (and a small client) for any BlockDevice.

`protocol` is the sans-I/O core (handshake, option haggling, STARTTLS, request decoding),
`commands` runs requests against a BlockDevice, `server` and `client` move the bytes with
asyncio, `security` decides who may connect (TLS mode, allow-list, cap), `tls` builds the
X.509 contexts.
"""

from ophiura.nbd.client import NbdClient, NbdClientError, NbdError, NbdOptionError
from ophiura.nbd.protocol import ExportInfo, NbdProtocolError, ServerConnection, TlsMode
from ophiura.nbd.security import NbdListen, NbdSecurity, NbdSecurityError
from ophiura.nbd.server import NbdServer
from ophiura.nbd.tls import TlsConfigError, client_context

__all__ = [
    "ExportInfo",
    "NbdClient",
    "NbdClientError",
    "NbdError",
    "NbdListen",
    "NbdOptionError",
    "NbdProtocolError",
    "NbdSecurity",
    "NbdSecurityError",
    "NbdServer",
    "ServerConnection",
    "TlsConfigError",
    "TlsMode",
    "client_context",
]
