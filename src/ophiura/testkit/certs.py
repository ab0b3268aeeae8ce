"""X.509 certificates for TLS tests, made with the `openssl` command (Debian's openssl package).

    pki = make_pki(tmp_path / "pki")   # a CA, a server cert for 127.0.0.1/localhost, a client
    pki.server   # ca-cert.pem, server-cert.pem, server-key.pem (ophiura's --tls-certificates)
    pki.client   # dir with ca-cert.pem, client-cert.pem, client-key.pem (libnbd/qemu's layout)

Each directory is laid out as libnbd, qemu and nbdkit expect. `make_pki` called twice gives two
unrelated CAs (a client of one is a stranger to a server of the other). EC P-256 keys keep it
fast; keys are written 0600.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    root: Path
    server: Path  # ca-cert.pem, server-cert.pem, server-key.pem
    client: Path  # ca-cert.pem, client-cert.pem, client-key.pem
    ca_only: Path  # ca-cert.pem only: a client that trusts the server but has no certificate


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {done.stderr.strip()}")


def _key(name: str, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", name, cwd=cwd)  # fmt: skip
    (cwd / name).chmod(0o600)


def _signed(stem: str, cn: str, extensions: str, cwd: Path) -> None:
    _key(f"{stem}-key.pem", cwd)
    _openssl("req", "-new", "-key", f"{stem}-key.pem", "-subj", f"/CN={cn}",
             "-out", f"{stem}.csr", cwd=cwd)  # fmt: skip
    (cwd / f"{stem}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", f"{stem}.ext",
             "-out", f"{stem}-cert.pem", cwd=cwd)  # fmt: skip


def make_pki(root: Path, name: str = "ophiura test") -> Pki:
    """A CA, a server certificate (SAN 127.0.0.1, ::1, localhost) and a client certificate."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    work = root / "work"
    work.mkdir(parents=True)
    _key("ca-key.pem", work)
    _openssl("req", "-x509", "-new", "-key", "ca-key.pem", "-subj", f"/CN={name} CA",
             "-days", "2", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", "ca-cert.pem", cwd=work)  # fmt: skip
    _signed(
        "server",
        "localhost",
        "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
        work,
    )
    _signed(
        "client",
        f"{name} client",
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
        work,
    )
    dirs = {}
    for kind, files in (
        ("server", ("server-cert.pem", "server-key.pem")),
        ("client", ("client-cert.pem", "client-key.pem")),
        ("ca_only", ()),
    ):
        d = root / kind
        d.mkdir()
        shutil.copy(work / "ca-cert.pem", d / "ca-cert.pem")
        for f in files:
            shutil.copy(work / f, d / f)
        dirs[kind] = d
    return Pki(root, dirs["server"], dirs["client"], dirs["ca_only"])
