"""The etcd backend over TLS with client certificates and etcd's own users, against a real
etcd: the requests (hakit.coord.etcd.http) and the watch's stream (hakit.coord.etcd.watch).

One etcd for the module: HTTPS only, client certificates required (trustme's test CA),
then a ``root`` user made and authentication enabled through the gateway.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from hakit.coord.base import NodeRecord
from hakit.coord.etcd import EtcdCoordinator, EtcdSection
from hakit.coord.etcd.http import Endpoint, HttpError, tls_context
from hakit.demo.cluster import free_ports
from hakit.errors import CoordinationError
from tests.support.etcd import ETCD, MISSING, etcd_available, unique_prefix
from tests.support.procnet import listens_on

PASSWORD = "correct horse"


@dataclass
class TlsEtcd:
    endpoint: str
    ca: Path
    cert: Path
    key: Path

    def section(self, **fields: object) -> EtcdSection:
        values: dict[str, object] = {
            "endpoints": [self.endpoint],
            "prefix": unique_prefix("tls"),
            "timeout": 5.0,
            "ca_cert": self.ca,
            "cert": self.cert,
            "key": self.key,
            "username": "root",
            "password": PASSWORD,
        }
        values.update(fields)
        return EtcdSection.model_validate(values)


def _answered(endpoint: Endpoint, path: str, body: dict[str, object]) -> None:
    answer = endpoint.post(path, body, (5.0, 5.0))
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[TlsEtcd]:
    if not etcd_available():
        pytest.skip(MISSING)
    root = Path(tempfile.mkdtemp(prefix="hakit-etcd-tls-"))
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("hakit-agent")
    ca.cert_pem.write_to_path(root / "ca.pem")
    server.private_key_and_cert_chain_pem.write_to_path(root / "server.pem")
    client.cert_chain_pems[0].write_to_path(root / "client.pem")
    client.private_key_pem.write_to_path(root / "client-key.pem")
    port, peer = free_ports(2)
    url = f"https://127.0.0.1:{port}"
    log = open(root / "etcd.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            str(ETCD),
            "--name=tls",
            f"--data-dir={root / 'data'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=tls=http://127.0.0.1:{peer}",
            f"--cert-file={root / 'server.pem'}",
            f"--key-file={root / 'server.pem'}",
            f"--trusted-ca-file={root / 'ca.pem'}",
            "--client-cert-auth",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--log-level=error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        found = TlsEtcd(url, root / "ca.pem", root / "client.pem", root / "client-key.pem")
        admin = Endpoint(url, "/v3/", tls_context(found.ca, found.cert, found.key))
        deadline = time.monotonic() + 30
        while True:  # bounded: until it answers, or 30 s
            assert process.poll() is None, (root / "etcd.log").read_text()[-2000:]
            if listens_on(process.pid, port):
                try:
                    _answered(admin, "/maintenance/status", {})
                    break
                except (HttpError, AssertionError):
                    pass
            assert time.monotonic() < deadline, "the TLS etcd did not answer within 30 s"
            time.sleep(0.05)
        _answered(admin, "/auth/user/add", {"name": "root", "password": PASSWORD})
        _answered(admin, "/auth/user/grant", {"user": "root", "role": "root"})
        _answered(admin, "/auth/enable", {})
        admin.close()
        yield found
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


def test_every_kind_of_call_works_over_tls_with_a_user(tls_etcd: TlsEtcd) -> None:
    section = tls_etcd.section()
    with (
        EtcdCoordinator(section, cluster="c") as writer,
        EtcdCoordinator(section, cluster="c") as reader,
    ):
        lease = writer.acquire_or_renew("n1", 5.0)
        assert lease is not None and lease.epoch == 1
        writer.publish_node(NodeRecord("n1", "active", "RUNNING", 1, 1.0))
        writer.set_state("paused", {"paused": True})
        token = reader.wait_change(None, 10.0)  # once the watch (TLS, the user) is made
        assert token is not None
        together, records = reader.lease_and_nodes()
        assert together == lease and [r.node for r in records] == ["n1"]
        assert reader.get_state("paused") == {"paused": True}
        assert writer.renew_epoch("n1", 1, 5.0) is not None
        moved = reader.wait_change(token, 10.0)
        assert moved is not None and moved != token


def test_a_wrong_password_is_refused(tls_etcd: TlsEtcd) -> None:
    with (
        EtcdCoordinator(tls_etcd.section(password="wrong"), cluster="c") as store,
        pytest.raises(CoordinationError, match="refused user 'root'"),
    ):
        store.last_epoch()


def test_a_client_without_a_certificate_gets_no_answer(tls_etcd: TlsEtcd) -> None:
    section = tls_etcd.section(cert=None, key=None, timeout=2.0)
    with (
        EtcdCoordinator(section, cluster="c") as store,
        pytest.raises(CoordinationError, match="could not"),
    ):
        store.last_epoch()
