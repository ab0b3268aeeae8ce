"""Free ports on 127.0.0.1, picked by the kernel (bind to port 0, read it back, release it).

Why one helper: a test that hard-codes a port collides with a parallel run or another
engineer's service; asking the kernel does not. `free_ports(n)` keeps all n sockets bound
until it has them all, so the n ports are distinct.
"""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_ports(n: int, kind: int = socket.SOCK_STREAM, host: str = HOST) -> list[int]:
    """`n` distinct ports on `host` that nothing is bound to right now (TCP by default;
    `socket.SOCK_DGRAM` for UDP, e.g. heartbeat links)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, kind)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(kind: int = socket.SOCK_STREAM, host: str = HOST) -> int:
    """One port on `host` that nothing is bound to right now (TCP by default)."""
    return free_ports(1, kind, host)[0]
