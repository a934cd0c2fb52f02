"""Read Linux's TCP table: is a process waiting for an answer from a local server?

Used to freeze an agent exactly while one of its probes is in flight: with the
app stopped (SIGSTOP), the kernel still accepts the probe's connection and
queues its request, so the app's end of the connection has unread bytes, and
the agent's end is one of the agent's own sockets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

_ESTABLISHED = "01"


@dataclass(frozen=True, slots=True)
class TcpEntry:
    local_port: int
    remote_port: int
    state: str
    rx_queue: int
    inode: int


def tcp_entries() -> list[TcpEntry]:
    """IPv4 TCP sockets of this network namespace (/proc/net/tcp)."""
    entries = []
    with open("/proc/net/tcp") as table:
        next(table)  # header
        for line in table:
            fields = line.split()
            local, remote, state, queues, inode = (
                fields[1],
                fields[2],
                fields[3],
                fields[4],
                fields[9],
            )
            entries.append(
                TcpEntry(
                    local_port=int(local.rsplit(":", 1)[1], 16),
                    remote_port=int(remote.rsplit(":", 1)[1], 16),
                    state=state,
                    rx_queue=int(queues.split(":")[1], 16),
                    inode=int(inode),
                )
            )
    return entries


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError):
        return inodes  # the process is gone
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def request_unanswered(pid: int, server_port: int) -> bool:
    """True when ``pid`` has sent a request to ``server_port`` that the server has not read."""
    entries = tcp_entries()
    mine = socket_inodes(pid)
    client_ports = {
        e.local_port
        for e in entries
        if e.remote_port == server_port and e.inode in mine and e.state == _ESTABLISHED
    }
    return any(
        e.local_port == server_port and e.remote_port in client_ports and e.rx_queue > 0
        for e in entries
    )


def listens_on(pid: int, port: int) -> bool:
    """Process ``pid`` itself has a listening TCP socket on ``port``."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)
