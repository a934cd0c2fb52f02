"""Latency and loss without netem: a user-space TCP relay and nftables rules, per host.

The kernel here has no ``sch_netem``, so a slow or lossy link to the store is made
by hand, inside one host's network namespace:

- latency: every TCP connection the host opens to an etcd member is redirected
  (nftables ``redirect`` in the nat output hook) to a relay on 127.0.0.1 in the
  same namespace, which holds every chunk it reads, in each direction, for
  ``delay`` seconds before writing it on (order kept, throughput not capped: a
  chunk waits its own delay, not the previous ones'). The relay's own connections
  to the members carry a socket mark the redirect skips. The delay starts at 0 and
  is switched on and off with SIGUSR1 / SIGUSR2, so the cluster starts on a
  plain link and every connection to the store already goes through the relay
  (NAT only applies to new connections) when the test slows it down;
- loss: ``numgen random mod 100 < percent drop`` on the host's packets to and
  from the members; TCP retransmits them, which shows up as latency.

``store_relays(net, hosts)`` starts the relays (by PID, as this process's children)
and adds the redirect table; ``Relays.slow()``, ``Relays.lossy()`` turn the impairments
on, ``Relays.clear()`` off; everything is removed when the block ends, however it ends.

Run as a script (``python relay.py --listen 127.0.0.1:12379 --to 10.1.2.21:2379
--delay 0.2 --mark 7``) it is the relay itself.
"""

from __future__ import annotations

import argparse
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # run as a script in a namespace, the relay imports nothing of the tests
    from tests.support.hosts import Host, Lan

MARK = 0x68  # the relays' own connections: not redirected again
RELAY_BASE_PORT = 12379  # the relay for store i listens on RELAY_BASE_PORT + i


# --- the relay (runs in a host's namespace) -------------------------------------------


class _Delay:
    def __init__(self, seconds: float) -> None:
        self.configured = seconds
        self.now = 0.0


def _pump(source: socket.socket, sink: socket.socket, delay: _Delay) -> None:
    """Read from ``source``; write each chunk to ``sink`` ``delay.now`` seconds later."""
    held: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def send() -> None:
        while True:
            due, chunk = held.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not chunk:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(chunk)
            except OSError:
                return

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    while True:
        try:
            chunk = source.recv(65536)
        except OSError:
            chunk = b""
        held.put((time.monotonic() + delay.now, chunk))
        if not chunk:
            break
    sender.join()


def _serve(client: socket.socket, target: tuple[str, int], delay: _Delay) -> None:
    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        upstream.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), MARK)
        upstream.settimeout(5)
        upstream.connect(target)
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True)
    back.start()
    _pump(client, upstream, delay)
    back.join()
    client.close()
    upstream.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    to_host, _, to_port = args.to.rpartition(":")
    delay = _Delay(args.delay)
    signal.signal(signal.SIGUSR1, lambda *_: setattr(delay, "now", delay.configured))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(delay, "now", 0.0))
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, int(port)))
    server.listen(128)
    print("listening", flush=True)
    while True:
        client, _ = server.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(
            target=_serve, args=(client, (to_host, int(to_port)), delay), daemon=True
        ).start()


# --- the harness's side ------------------------------------------------------------------


def _nft(host: Host, rules: str) -> None:
    subprocess.run(
        [*host.prefix(), "nft", "-f", "-"], input=rules, text=True, check=True, timeout=30
    )


def _nft_delete(host: Host, table: str) -> None:
    subprocess.run(
        [*host.prefix(), "nft", "delete", "table", "ip", table],
        capture_output=True,
        timeout=30,
        check=False,
    )


@dataclass
class Relays:
    net: Lan
    hosts: list[Host]
    processes: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    lossy_hosts: set[str] = field(default_factory=set)

    @property
    def redirect_table(self) -> str:
        return f"hkrelay{self.net.tag}"

    @property
    def loss_table(self) -> str:
        return f"hkloss{self.net.tag}"

    def slow(self) -> None:
        """Every relay holds each chunk for its delay (each direction)."""
        for group in self.processes.values():
            for process in group:
                process.send_signal(signal.SIGUSR1)

    def lossy(self, percent: int) -> None:
        """Drop ``percent`` % of each host's packets to and from the members, at random."""
        stores = ", ".join(self.net.store_ips())
        for host in self.hosts:
            _nft(
                host,
                "\n".join(
                    [
                        f"table ip {self.loss_table} {{",
                        "  chain input { type filter hook input priority -5; policy accept;",
                        f"    ip saddr {{ {stores} }} numgen random mod 100 < {percent} drop",
                        "  }",
                        "  chain output { type filter hook output priority -5; policy accept;",
                        f"    ip daddr {{ {stores} }} numgen random mod 100 < {percent} drop",
                        "  }",
                        "}",
                    ]
                ),
            )
            self.lossy_hosts.add(host.name)

    def clear(self) -> None:
        """No delay, no loss (the redirect stays: the relays pass chunks on at once)."""
        for group in self.processes.values():
            for process in group:
                process.send_signal(signal.SIGUSR2)
        for host in self.hosts:
            if host.name in self.lossy_hosts:
                _nft_delete(host, self.loss_table)
                self.lossy_hosts.discard(host.name)


@contextmanager
def store_relays(net: Lan, hosts: Sequence[Host], delay: float = 0.2) -> Iterator[Relays]:
    """A relay per (host, etcd member), each host's connections to the members redirected
    through its relays; the delay (``delay`` s per chunk, each way) off until ``slow()``."""
    from tests.support.hosts import CLIENT_PORT

    relays = Relays(net, list(hosts))
    script = Path(__file__).resolve()
    try:
        for host in hosts:
            group = relays.processes.setdefault(host.name, [])
            redirects = []
            for index, store in enumerate(net.stores):
                port = RELAY_BASE_PORT + index
                process = subprocess.Popen(
                    [
                        *host.prefix(),
                        sys.executable,
                        str(script),
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--to",
                        f"{store.ip}:{CLIENT_PORT}",
                        "--delay",
                        str(delay),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                group.append(process)
                assert process.stdout is not None
                line = process.stdout.readline()  # after bind and listen
                if line.strip() != b"listening":
                    raise RuntimeError(f"the relay in {host.name} to {store.ip} did not start")
                redirects.append(
                    f"    ip daddr {store.ip} tcp dport {CLIENT_PORT} redirect to :{port}"
                )
            _nft(
                host,
                "\n".join(
                    [
                        f"table ip {relays.redirect_table} {{",
                        "  chain output { type nat hook output priority -100; policy accept;",
                        f"    meta mark {MARK} return",
                        *redirects,
                        "  }",
                        "}",
                    ]
                ),
            )
        yield relays
    finally:
        for host in hosts:
            _nft_delete(host, relays.loss_table)
            _nft_delete(host, relays.redirect_table)
        for group in relays.processes.values():
            for process in group:  # `ip netns exec` execs python: this is the relay's PID
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=10)
                if process.stdout is not None:
                    process.stdout.close()


if __name__ == "__main__":
    main()
