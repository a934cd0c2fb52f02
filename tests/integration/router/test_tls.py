"""TLS termination and the HTTP -> HTTPS redirect, with trustme certificates and real clients.

Clients: httpx (verifying against the test CA), curl --cacert (also following
the redirect), and Python's ssl module to look at what was negotiated.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from hakit.config import Config, load_config
from hakit.demo.cluster import free_port
from hakit.errors import HakitError
from hakit.router.tls import server_context
from tests.integration.router.test_slowhttp import _StatusHandler
from tests.support.router_harness import Backend, ClusterHolder, RouterThread, make_config
from tests.unit.config.test_config import BASE


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the router's certificate chain
    key: Path  # its key
    other_key: Path  # a key of another certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    for number, blob in enumerate(issued.cert_chain_pems):
        blob.write_to_path(folder / "cert.pem", append=number > 0)
    issued.private_key_pem.write_to_path(folder / "key.pem")
    ca.issue_cert("other.example").private_key_pem.write_to_path(folder / "other-key.pem")
    return Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", folder / "other-key.pem")


def tls_config(tmp_path: Path, port: int, pki: Pki, redirect: int | None = None) -> Config:
    cfg = make_config(tmp_path, {"n1": port})
    keys: dict[str, object] = {"tls_cert": pki.cert, "tls_key": pki.key}
    if redirect is not None:
        keys["redirect_http"] = f"127.0.0.1:{redirect}"
    return cfg.model_copy(update={"router": cfg.router.model_copy(update=keys)})


@dataclass
class TlsSetup:
    backend: Backend
    router: RouterThread
    redirect_port: int

    @property
    def url(self) -> str:
        return f"https://localhost:{self.router.port}"


@pytest.fixture
def tls(tmp_path: Path, pki: Pki) -> Iterator[TlsSetup]:
    backend = Backend("n1")
    backend.RequestHandlerClass = _StatusHandler
    cluster = ClusterHolder()
    cluster.active("n1", 1)
    router = None
    try:
        for _ in range(5):  # a free port may be taken by a parallel test before we bind it
            redirect = free_port()
            try:
                router = RouterThread(
                    tls_config(tmp_path, backend.port, pki, redirect), cluster, None
                )
                break
            except HakitError as error:
                if "redirect_http" not in str(error):
                    raise
        assert router is not None
        yield TlsSetup(backend, router, redirect)
    finally:
        if router is not None:
            router.close()
        backend.stop()


def last_request(backend: Backend) -> dict[str, list[str]]:
    seen = [s for s in backend.seen if s.path != "/status"][-1]
    headers: dict[str, list[str]] = {}
    for key, value in seen.headers:
        headers.setdefault(key.lower(), []).append(value)
    return headers


# --- TLS termination ----------------------------------------------------------------------


def test_httpx_over_tls_reaches_the_backend_as_https(tls: TlsSetup, pki: Pki) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=pki.ca), timeout=10) as client:
        for _ in range(3):  # keep-alive over one TLS connection
            response = client.get(tls.url + "/app?x=1", headers={"X-Forwarded-Proto": "http"})
            assert response.status_code == 200 and response.http_version == "HTTP/1.1"
            assert json.loads(response.content)["path"] == "/app?x=1"
    headers = last_request(tls.backend)
    assert headers["x-forwarded-proto"] == ["https"]  # the client's own claim was replaced
    assert headers["forwarded"] == [f'for=127.0.0.1;proto=https;host="localhost:{tls.router.port}"']
    assert tls.backend.connections == 1  # the backend connection was pooled across requests


def test_curl_with_the_ca(tls: TlsSetup, pki: Pki) -> None:
    done = subprocess.run(
        ["curl", "-sS", "-v", "--cacert", str(pki.ca), "-o", "-", tls.url + "/curl"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-1000:]
    assert json.loads(done.stdout)["path"] == "/curl"
    log = done.stderr.decode()
    assert "ALPN: server accepted http/1.1" in log or "ALPN, server accepted to use http/1.1" in log


def test_untrusted_client_refuses_the_certificate(tls: TlsSetup) -> None:
    done = subprocess.run(["curl", "-sS", tls.url], capture_output=True, timeout=30, check=False)
    assert done.returncode == 60  # peer certificate cannot be authenticated with known CAs


def handshake(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def client_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def test_negotiated_parameters_are_modern(tls: TlsSetup, pki: Pki) -> None:
    with handshake(tls.router.port, client_context(pki)) as sock:
        assert sock.version() == "TLSv1.3"
        assert sock.selected_alpn_protocol() == "http/1.1"  # never h2: we speak HTTP/1.1
        assert sock.compression() is None
    tls12 = client_context(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(tls.router.port, tls12) as sock:
        name, version, _ = sock.cipher()
        assert (
            version == "TLSv1.2"
            and name.startswith("ECDHE-")
            and ("GCM" in name or "CHACHA" in name)
        )


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_old_protocols_and_weak_ciphers_are_refused(tls: TlsSetup, pki: Pki) -> None:
    assert server_context(pki.cert, pki.key).minimum_version == ssl.TLSVersion.TLSv1_2
    old = client_context(pki)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")  # the client would accept TLS 1.0/1.1 if offered
    with pytest.raises(ssl.SSLError):
        handshake(tls.router.port, old).close()
    cbc = client_context(pki)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")  # CBC, no AEAD
    with pytest.raises(ssl.SSLError):
        handshake(tls.router.port, cbc).close()


def test_plain_http_on_the_tls_port_is_closed(tls: TlsSetup) -> None:
    with socket.create_connection(("127.0.0.1", tls.router.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            while sock.recv(65536):
                pass  # at most a TLS alert, then the close
        except ConnectionResetError:
            pass
    assert [s for s in tls.backend.seen if s.path != "/status"] == []


# --- the redirect -------------------------------------------------------------------------


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_is_redirected_with_308_to_https(tls: TlsSetup) -> None:
    request = b"POST /a/b?c=d HTTP/1.1\r\nHost: localhost:%d\r\nContent-Length: 0\r\n\r\n"
    answer = raw_request(tls.redirect_port, request % tls.redirect_port)
    head = answer.decode().split("\r\n")
    assert head[0] == "HTTP/1.1 308 Permanent Redirect"  # 308 keeps POST a POST
    assert f"Location: https://localhost:{tls.router.port}/a/b?c=d" in head
    assert "Connection: close" in head
    assert [s for s in tls.backend.seen if s.path != "/status"] == []  # never forwarded


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.example/x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    ],
    ids=["no host", "space", "slash", "two hosts", "nul"],
)
def test_redirect_refuses_an_invalid_host(tls: TlsSetup, request_bytes: bytes) -> None:
    answer = raw_request(tls.redirect_port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert b"location:" not in answer.lower()


def test_curl_follows_the_redirect(tls: TlsSetup, pki: Pki) -> None:
    url = f"http://localhost:{tls.redirect_port}/followed"
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-L",
            "--cacert",
            str(pki.ca),
            "-w",
            "%{url_effective} %{num_redirects}",
            url,
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-1000:]
    body, _, info = done.stdout.decode().rpartition("}")
    assert json.loads(body + "}")["path"] == "/followed"
    assert info == f"https://localhost:{tls.router.port}/followed 1"


# --- certificate and key problems ---------------------------------------------------------


def encrypted_copy(key: Path, target: Path) -> Path:
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    target.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return target


PROBLEMS: dict[str, tuple[Callable[[Pki, Path], tuple[Path, Path]], str]] = {
    "missing certificate": (
        lambda p, t: (t / "nope.pem", p.key),
        r"cannot read the TLS certificate file .*nope\.pem \(No such file",
    ),
    "missing key": (lambda p, t: (p.cert, t / "nokey.pem"), r"TLS key file .*nokey\.pem"),
    "key is not PEM": (lambda p, t: (p.cert, p.ca), r"TLS key file .*ca\.pem holds no PEM key"),
    "certificate is not PEM": (
        lambda p, t: (p.key, p.key),
        r"TLS certificate file .*key\.pem holds no PEM certificate",
    ),
    "key of another certificate": (
        lambda p, t: (p.cert, p.other_key),
        r"TLS key .*other-key\.pem does not belong to the certificate .*cert\.pem",
    ),
    "encrypted key": (
        lambda p, t: (p.cert, encrypted_copy(p.key, t / "enc.pem")),
        r"TLS key .*enc\.pem is encrypted",
    ),
}


@pytest.mark.parametrize("problem", PROBLEMS.values(), ids=PROBLEMS.keys())
def test_unusable_files_are_named(
    pki: Pki, tmp_path: Path, problem: tuple[Callable[[Pki, Path], tuple[Path, Path]], str]
) -> None:
    files, message = problem
    cert, key = files(pki, tmp_path)
    with pytest.raises(HakitError, match=message):
        server_context(cert, key)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_is_named(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(pki.key.read_bytes())
    key.chmod(0)
    with pytest.raises(HakitError, match=r"TLS key file .*key\.pem \(Permission denied"):
        server_context(pki.cert, key)


def test_router_refuses_to_start_with_a_bad_key(tmp_path: Path, pki: Pki) -> None:
    cfg = tls_config(tmp_path, 9, Pki(pki.ca, pki.cert, pki.other_key, pki.other_key))
    with pytest.raises(HakitError, match="does not belong to the certificate"):
        RouterThread(cfg, ClusterHolder(), None)


def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    router = '\n[router]\ntls_cert = "tls/cert.pem"\ntls_key = "/abs/key.pem"\naccess_log = "log/a.log"\n'
    (folder / "hakit.toml").write_text(BASE + router)
    cfg = load_config(folder / "hakit.toml")
    assert cfg.router.tls_cert == folder / "tls" / "cert.pem"
    assert cfg.router.tls_key == Path("/abs/key.pem")
    assert cfg.router.access_log == str(folder / "log" / "a.log")
    (folder / "hakit.toml").write_text(BASE + '\n[router]\naccess_log = "-"\n')
    assert load_config(folder / "hakit.toml").router.access_log == "-"  # stderr stays stderr
