"""The REST API over HTTPS (`cluster.http_tls_cert` / `http_tls_key`), against a real
`ophiura node`: a client that trusts the certificate gets answers, a plain-HTTP client gets none,
and a node whose certificate is missing serves no REST API at all (never plain HTTP instead)
while the daemon carries on."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .kit import make_cluster, token

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "n1.crt", tmp / "n1.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=n1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def test_rest_api_over_https_only(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    c = make_cluster(tmp_path, ["n1"], extra=f'http_tls_cert = "{cert}"\nhttp_tls_key = "{key}"')
    host, port = c.cfg.http_address("n1") or ("", 0)
    c.start("n1")
    try:
        c.wait_for("n1 answers its admin API", lambda: c.status("n1")["node"] == "n1", 10)
        trust = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(f"https://{host}:{port}/api/v1/status")
        req.add_header("Authorization", f"Bearer {token(c)}")

        def answered() -> bool:
            try:
                with urllib.request.urlopen(req, timeout=5, context=trust) as resp:
                    return resp.status == 200 and b'"node"' in resp.read()
            except (urllib.error.URLError, ConnectionError):
                return False

        c.wait_for("an HTTPS answer", answered, 10)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://{host}:{port}/health", timeout=5)  # untrusted
        plain = http.client.HTTPConnection(host, port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/health")
            plain.getresponse()  # a TLS server does not speak HTTP
        plain.close()
        log = c.logs["n1"].read_text()
        assert f"https://{host}:{port}/" in log and "plain HTTP" not in log
    finally:
        c.stop()


def test_missing_certificate_no_rest_api_and_no_plain_http(tmp_path: Path) -> None:
    c = make_cluster(
        tmp_path,
        ["n1"],
        extra=f'http_tls_cert = "{tmp_path}/none.crt"\nhttp_tls_key = "{tmp_path}/none.key"',
    )
    host, port = c.cfg.http_address("n1") or ("", 0)
    c.start("n1")
    try:
        c.wait_for("n1 answers its admin API", lambda: c.status("n1")["node"] == "n1", 10)
        events = c.status("n1")["events"]
        failed = [e for e in events if e["task"] == "http-failed"]
        assert failed and "none.crt" in failed[0]["desc"], events
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2)
        assert c.procs["n1"].poll() is None
    finally:
        c.stop()


def test_cert_and_key_go_together(tmp_path: Path) -> None:
    from ophiura.cluster.config import ConfigError

    with pytest.raises(ConfigError, match="http_tls_cert and http_tls_key go together"):
        make_cluster(tmp_path, ["n1"], extra='http_tls_cert = "/x.crt"')


def test_plain_http_beyond_loopback_is_an_exposure(tmp_path: Path) -> None:
    """What the node logs at start and `cluster status` shows (`exposure`)."""
    from ophiura.web.server import WebServer, server_tls

    cert, key = _self_signed(tmp_path)
    assert WebServer(None, "127.0.0.1", 8440).warning is None  # type: ignore[arg-type]
    open_ = WebServer(None, "198.51.100.1", 8440).warning  # type: ignore[arg-type]
    assert open_ is not None and "plain HTTP" in open_ and "http_tls_cert" in open_
    tls = WebServer(None, "198.51.100.1", 8440, server_tls(cert, key))  # type: ignore[arg-type]
    assert tls.warning is None
