"""A network namespace joined to the root namespace by a veth pair, for data-path tests.

A node run inside it (``ip netns exec NAME ...``: its agent, hence its app) is
reachable from the root namespace (the router) only through the veth pair, so
``cut()`` (the root side's link down) takes away exactly the network path
between the router and that node, while the node keeps everything else: its own
address, and the coordination store, which is a file (a network namespace does
not isolate the file system).

Names and addresses are unique per namespace made (pid and a random number), so
parallel test workers do not collide; ``veth_namespace`` removes both however
the test ends. Needs root and iproute2 (``netns_unavailable`` says why not).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SUBNET = ipaddress.ip_network("10.231.0.0/16")  # private; one /30 per namespace


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"hkprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip() or made.stdout.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class NetNs:
    name: str
    host_if: str  # the root namespace's end of the veth pair
    ns_if: str  # the namespace's end
    host_ip: str
    ns_ip: str  # the namespace's address, reachable from the root namespace

    def prefix(self) -> tuple[str, ...]:
        """Run a command inside the namespace: put this before its argv."""
        return ("ip", "netns", "exec", self.name)

    def cut(self) -> None:
        """Take the path away: the root side's link down (its route goes with it)."""
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")


def _used_addresses() -> str:
    return _ip("-4", "-o", "addr", "show").stdout


@contextmanager
def veth_namespace() -> Iterator[NetNs]:
    """A namespace NAME with ``ns_ip``/30 on its end of a veth pair, ``host_ip``/30 on ours."""
    tag = f"{os.getpid() % 100000}{random.randrange(1000):03d}"
    used = _used_addresses()
    for _ in range(100):
        base = SUBNET.network_address + 4 * random.randrange(SUBNET.num_addresses // 4)
        host_ip, ns_ip = str(base + 1), str(base + 2)
        if f" {host_ip}/" not in used and f" {ns_ip}/" not in used:
            break
    else:
        raise RuntimeError(f"no free /30 in {SUBNET}")
    ns = NetNs(f"hakit{tag}", f"hkh{tag}", f"hkn{tag}", host_ip, ns_ip)
    _ip("netns", "add", ns.name)
    try:
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        try:
            _ip("link", "set", ns.ns_if, "netns", ns.name)
            _ip("addr", "add", f"{host_ip}/30", "dev", ns.host_if)
            _ip("link", "set", ns.host_if, "up")
            inside = ("netns", "exec", ns.name, "ip")
            _ip(*inside, "addr", "add", f"{ns_ip}/30", "dev", ns.ns_if)
            _ip(*inside, "link", "set", ns.ns_if, "up")
            _ip(*inside, "link", "set", "lo", "up")
            # Once the link is down its route goes, and the /30 would follow the default
            # route instead (to a gateway that may even answer): keep it unreachable.
            _ip("route", "add", "unreachable", f"{base}/30", "metric", "4242")
            try:
                yield ns
            finally:
                _ip("route", "del", "unreachable", f"{base}/30", "metric", "4242", check=False)
        finally:
            _ip("link", "del", ns.host_if, check=False)  # its peer goes with it
    finally:
        _ip("netns", "del", ns.name, check=False)
