"""A PostgreSQL client small enough to trust in a failover test: protocol 3, trust auth, simple
queries, and nothing hidden (no pool, no retry, no reconnect of its own).

Why not psql or a driver: the project takes no database driver as a dependency, and a psql
process per row measures process start-up, and its `connect_timeout` has a 2 s floor that blurs
an outage of a second. Here a connect attempt has its own short timeout, so the client sees
the first answer within a few tens of milliseconds of the database taking connections.

`python -m ophiura.testkit.pgwire ledger --host H --out F --until FILE` commits one ledger row
per transaction (`INSERT ... VALUES (id, digest)`, autocommit: the CommandComplete of an
INSERT outside a transaction block arrives after its commit, flushed when synchronous_commit
is on) and records an id as committed only once that answer arrived; an id whose answer never
came is "in doubt" (it may or may not be there after a crash, both are right). Results (wall
clock, seconds) go to F as JSON when FILE appears or `--duration` passes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import time
from typing import Any


class PgError(Exception):
    """The server answered with an ErrorResponse; `fields` holds its fields by type code."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"{fields.get('S', 'ERROR')} {fields.get('C', '')}: {fields.get('M', '')}")
        self.fields = fields


class PgConn:
    """One connection; every call raises OSError (connection gone, timeout) or PgError."""

    def __init__(self, host: str, port: int, user: str, database: str, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        body = struct.pack(">I", 196608)
        for k, v in (("user", user), ("database", database)):
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.sock.sendall(struct.pack(">I", len(body) + 4) + body)
        while True:
            kind, payload = self._message()
            if kind == b"R":
                (code,) = struct.unpack(">I", payload[:4])
                if code != 0:
                    raise PgError({"M": f"authentication method {code} is not supported (trust)"})
            elif kind == b"E":
                raise PgError(_fields(payload))
            elif kind == b"Z":
                return

    def _recv(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _message(self) -> tuple[bytes, bytes]:
        head = self._recv(5)
        (length,) = struct.unpack(">I", head[1:])
        return head[:1], self._recv(length - 4)

    def query(self, sql: str) -> list[list[str | None]]:
        """Run `sql` (simple query protocol); the rows of its last result, as text."""
        data = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack(">I", len(data) + 4) + data)
        rows: list[list[str | None]] = []
        error: PgError | None = None
        while True:
            kind, payload = self._message()
            if kind == b"T":
                rows = []
            elif kind == b"D":
                (n,) = struct.unpack(">H", payload[:2])
                pos, row = 2, []
                for _ in range(n):
                    (size,) = struct.unpack(">i", payload[pos : pos + 4])
                    pos += 4
                    if size < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos : pos + size].decode())
                        pos += size
                rows.append(row)
            elif kind == b"E":
                error = PgError(_fields(payload))
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"X" + struct.pack(">I", 4))
        self.sock.close()


def _fields(payload: bytes) -> dict[str, str]:
    out = {}
    for part in payload.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


def digest(row: int) -> str:
    """What the ledger stores for row `row`: checked after the failover."""
    return hashlib.sha256(f"ophiura-ledger-{row}".encode()).hexdigest()


LEDGER_DDL = "CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY, digest text NOT NULL)"


def ledger(args: argparse.Namespace) -> dict[str, Any]:
    committed: list[list[float]] = []  # [id, sent, answered]
    in_doubt: list[int] = []
    failures: list[list[Any]] = []  # [time, what]
    conn: PgConn | None = None
    row = args.first
    end = time.time() + args.duration
    while time.time() < end and not (args.until and os.path.exists(args.until)):
        if conn is None:
            try:
                conn = PgConn(args.host, args.port, args.user, args.database, args.connect_timeout)
                conn.sock.settimeout(args.timeout)
            except (OSError, PgError) as exc:
                failures.append([time.time(), f"connect: {exc}"])
                time.sleep(args.retry)
                continue
        sent = time.time()
        try:
            conn.query(f"INSERT INTO ledger (id, digest) VALUES ({row}, '{digest(row)}')")
            committed.append([row, sent, time.time()])
        except PgError as exc:
            failures.append([time.time(), f"row {row}: {exc}"])
            in_doubt.append(row)
            conn.close()
            conn = None
        except OSError as exc:
            failures.append([time.time(), f"row {row}: {exc}"])
            in_doubt.append(row)
            conn.sock.close()
            conn = None
        row += 1
        if args.period:
            time.sleep(args.period)
    if conn is not None:
        conn.close()
    return {"committed": committed, "in_doubt": in_doubt, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ophiura.testkit.pgwire")
    sub = ap.add_subparsers(dest="cmd", required=True)
    led = sub.add_parser("ledger", help="commit ledger rows one per transaction")
    led.add_argument("--host", required=True)
    led.add_argument("--port", type=int, default=5432)
    led.add_argument("--user", default="postgres")
    led.add_argument("--database", default="postgres")
    led.add_argument("--out", required=True)
    led.add_argument("--until", help="stop when this file exists")
    led.add_argument("--duration", type=float, default=120.0)
    led.add_argument("--first", type=int, default=1)
    led.add_argument("--period", type=float, default=0.0, help="pause between rows")
    led.add_argument("--timeout", type=float, default=5.0, help="seconds for one answer")
    led.add_argument("--connect-timeout", type=float, default=0.2)
    led.add_argument("--retry", type=float, default=0.02, help="pause after a failed connect")
    args = ap.parse_args(argv)
    result = ledger(args)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
