"""The TCP failover proxy (tcp.py) with real upstream servers over real sockets.

The upstreams are "LDAP-like mirrors": asyncio servers that greet with a
banner naming themselves, answer PING with +PONG and echo other lines with
their name, so a client can tell which mirror it reached. Proxy, mirrors and
clients share one uvloop event loop (the loop `hakit router` runs on).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from hakit.config import TcpProxyConfig
from hakit.demo.cluster import free_ports
from hakit.router.checks import tcp_check
from hakit.router.health import HealthState, ResultKind
from hakit.router.tcp import TcpProxy

CHECK_EXPECT = r"^\* \S+ LDAP-LIKE READY\r\n\+PONG"


def run(coro: Coroutine[Any, Any, None], timeout: float = 60) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro

    uvloop.run(bounded())


async def until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Wait for ``condition`` (polled), failing with ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


class Mirror:
    """An LDAP-like upstream on its own port."""

    def __init__(self, name: str, banner: str = "LDAP-LIKE READY") -> None:
        self.name = name
        self.banner = banner
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Mirror:
        """Listen (again, on the same port once it had one)."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def stop_listening(self) -> None:
        """New connections are refused; open ones stay."""
        if self.server is not None:
            self.server.close()
            self.server = None

    def kill(self) -> None:
        self.stop_listening()
        for writer in list(self.writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            writer.write(f"* {self.name} {self.banner}\r\n".encode())
            while line := await reader.readline():
                text = line.decode().strip()
                writer.write(
                    b"+PONG\r\n" if text == "PING" else f"{self.name}: {text}\r\n".encode()
                )
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


class Client:
    """A client through the proxy; knows which mirror greeted it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.mirror = ""

    @classmethod
    async def open(cls, port: int) -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        async with asyncio.timeout(5):
            banner = await client.reader.readline()
        match = re.match(rb"\* (\S+) ", banner)
        assert match, f"no banner through the proxy (got {banner!r})"
        client.mirror = match.group(1).decode()
        return client

    async def say(self, text: str) -> str:
        self.writer.write(f"{text}\r\n".encode())
        async with asyncio.timeout(5):
            return (await self.reader.readline()).decode().strip()

    def close(self) -> None:
        self.writer.close()


def proxy_config(mirrors: list[Mirror], **overrides: Any) -> TcpProxyConfig:
    settings: dict[str, Any] = {
        "name": "ldap",
        "listen": "127.0.0.1:1",  # replaced by port 0 in start()
        "upstreams": tuple(m.address for m in mirrors),
        "check": "send-expect",
        "send": "PING\r\n",
        "expect": CHECK_EXPECT,
        "interval": 0.05,
        "timeout": 2.0,
        "fall": 2,
        "rise": 2,
        "connect_timeout": 2.0,
    }
    return TcpProxyConfig(**(settings | overrides))


async def with_proxy(
    mirrors: list[Mirror],
    body: Callable[[TcpProxy, int], Awaitable[None]],
    **overrides: Any,
) -> None:
    for mirror in mirrors:
        await mirror.start()
    proxy = TcpProxy(proxy_config(mirrors, **overrides))
    try:
        _, port = await proxy.start("127.0.0.1", 0)
        await body(proxy, port)
    finally:
        await proxy.close()
        for mirror in mirrors:
            mirror.kill()


def state(proxy: TcpProxy, mirror: Mirror) -> HealthState:
    return proxy.health.state(mirror.address)


# --- failover ------------------------------------------------------------------------------


def test_new_connections_fail_over_in_order_open_ones_stay() -> None:
    a, b, c = Mirror("a"), Mirror("b"), Mirror("c")

    async def body(proxy: TcpProxy, port: int) -> None:
        first = await Client.open(port)
        assert first.mirror == "a"
        a.stop_listening()  # "a" refuses new connections; `first` stays open
        second = await Client.open(port)  # refused by a -> a DOWN at once -> b
        assert second.mirror == "b"
        assert state(proxy, a) is HealthState.DOWN
        assert await first.say("still here") == "a: still here"
        assert await second.say("hello") == "b: hello"
        b.kill()
        third = await Client.open(port)
        assert third.mirror == "c"
        assert await first.say("and now") == "a: and now"  # untouched by b's death
        for client in (first, second, third):
            client.close()

    run(with_proxy([a, b, c], body))


def test_failback_off_stays_on_the_upstream_it_moved_to() -> None:
    a, b, c = Mirror("a"), Mirror("b"), Mirror("c")

    async def body(proxy: TcpProxy, port: int) -> None:
        a.stop_listening()
        await until(lambda: state(proxy, a) is HealthState.DOWN, "the checks see a down")
        assert (await Client.open(port)).mirror == "b"
        await a.start()  # back on the same port
        await until(lambda: state(proxy, a) is HealthState.UP, "a rises again")
        assert (await Client.open(port)).mirror == "b"  # no failback
        b.kill()
        assert (await Client.open(port)).mirror == "a"  # b failed: first healthy in order

    run(with_proxy([a, b, c], body, failback=False))


def test_failback_on_returns_to_the_first_healthy() -> None:
    a, b = Mirror("a"), Mirror("b")

    async def body(proxy: TcpProxy, port: int) -> None:
        a.stop_listening()
        on_b = await Client.open(port)
        assert on_b.mirror == "b"
        await a.start()
        await until(lambda: state(proxy, a) is HealthState.UP, "a rises again")
        assert (await Client.open(port)).mirror == "a"
        assert await on_b.say("still on b") == "b: still on b"  # existing connection stays
        assert {f["upstream"] for f in proxy.flows()} == {a.address, b.address}

    run(with_proxy([a, b], body, failback=True))


def test_send_expect_check_fails_on_a_wrong_banner() -> None:
    a, b = Mirror("a", banner="SOMETHING ELSE"), Mirror("b")

    async def body(proxy: TcpProxy, port: int) -> None:
        await until(lambda: state(proxy, a) is HealthState.DOWN, "a's banner fails the check")
        assert state(proxy, b) is HealthState.UP
        assert "SOMETHING ELSE" in proxy.health.snapshot()[a.address]["last_check"]
        assert (await Client.open(port)).mirror == "b"
        # The checks themselves, directly: a plain TCP check is happy with either.
        wrong = await tcp_check("127.0.0.1", a.port, 0.5, b"PING\r\n", re.compile(CHECK_EXPECT))
        assert wrong.kind is ResultKind.FAIL and "SOMETHING ELSE" in wrong.detail
        right = await tcp_check("127.0.0.1", b.port, 2, b"PING\r\n", re.compile(CHECK_EXPECT))
        assert right.kind is ResultKind.OK
        assert (await tcp_check("127.0.0.1", a.port, 2)).kind is ResultKind.OK
        refused = await tcp_check("127.0.0.1", free_ports(1)[0], 2)
        assert refused.kind is ResultKind.FAIL and "cannot connect" in refused.detail

    run(with_proxy([a, b], body, timeout=0.5))  # a wrong banner fails by timeout


async def closed_at_once(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            assert await reader.read(100) == b""
    finally:
        writer.close()


def test_no_healthy_upstream_closes_the_connection_at_once() -> None:
    a, b = Mirror("a", banner="WRONG"), Mirror("b", banner="WRONG")

    async def body(proxy: TcpProxy, port: int) -> None:
        await until(
            lambda: {state(proxy, a), state(proxy, b)} == {HealthState.DOWN}, "both fail checks"
        )
        await closed_at_once(port)
        assert proxy.flows() == []

    run(with_proxy([a, b], body, timeout=0.5))


def test_every_upstream_refusing_closes_the_connection_at_once() -> None:
    a, b = Mirror("a"), Mirror("b")

    async def body(proxy: TcpProxy, port: int) -> None:
        a.kill()
        b.kill()
        await closed_at_once(port)  # refused by both (passive), nothing left to try
        assert {state(proxy, a), state(proxy, b)} == {HealthState.DOWN}

    # Checks far apart: the passive marks alone decide here.
    run(with_proxy([a, b], body, interval=60))


# --- the data path -------------------------------------------------------------------------

SIZE = 24 * 1024 * 1024  # more than the kernel buffers on the way can hold
PIECE = bytes(range(256)) * 256  # 64 KiB, not all zeros


class Sink:
    """An upstream that reads nothing until released, then reads to EOF and answers
    with the SHA-256 of what it got and SIZE bytes: the answer comes after the
    client's half-close."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.release.wait()
            digest = hashlib.sha256()
            while chunk := await reader.read(1 << 16):
                digest.update(chunk)
            writer.write(digest.hexdigest().encode() + b"\n")
            for _ in range(SIZE // len(PIECE)):
                writer.write(PIECE)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy's connect-only health check: gone before the answer
        finally:
            writer.close()


def test_backpressure_both_ways_and_half_close() -> None:
    async def main() -> None:
        sink = Sink()
        sink_port = await sink.start()
        cfg = proxy_config([], upstreams=(f"127.0.0.1:{sink_port}",), check="tcp", interval=60)
        proxy = TcpProxy(cfg)
        _, port = await proxy.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            sent = hashlib.sha256()

            async def upload() -> None:
                for _ in range(SIZE // len(PIECE)):
                    writer.write(PIECE)
                    sent.update(PIECE)
                    await writer.drain()

            uploading = asyncio.create_task(upload())
            # The sink reads nothing: the proxy must stop reading the client.
            await until(
                lambda: any(not f["client_reading"] for f in proxy.flows()),
                "the proxy pauses reading the client",
            )
            assert all(f["to_upstream_buffered"] <= 1 << 20 for f in proxy.flows())  # type: ignore[operator]
            assert not uploading.done()  # the client is held back, not buffered
            sink.release.set()
            await uploading
            writer.write_eof()  # half-close: the answer still comes back
            # Now the client reads nothing: the proxy must stop reading the sink.
            await until(
                lambda: any(not f["upstream_reading"] for f in proxy.flows()),
                "the proxy pauses reading the upstream",
            )
            assert all(f["to_client_buffered"] <= 1 << 20 for f in proxy.flows())  # type: ignore[operator]
            assert (await reader.readline()).decode().strip() == sent.hexdigest()
            received = hashlib.sha256()
            length = 0
            while chunk := await reader.read(1 << 16):
                received.update(chunk)
                length += len(chunk)
            assert length == SIZE
            assert received.digest() == hashlib.sha256(PIECE * (SIZE // len(PIECE))).digest()
            await until(lambda: proxy.connections == 0, "the proxy forgets the connection")
        finally:
            writer.close()
            await proxy.close()
            assert sink.server is not None
            sink.server.close()

    run(main())


# --- real LDAP mirrors ---------------------------------------------------------------------

EXAMPLE = Path(__file__).parents[3] / "examples" / "router-checks-and-ldap-proxy.toml"
SLAPD_CONF = """include /etc/ldap/schema/core.schema
pidfile {dir}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "dc={name}"
rootdn "cn=admin,dc={name}"
directory {dir}/db
maxsize 10485760
"""


def binary(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(
            f"{name} is not installed; it is listed in scripts/debian-packages.txt "
            "(apt-get install -y slapd ldap-utils, or run `make bootstrap` as root)"
        )
    return found


def start_slapd(tmp_path: Path, name: str, port: int) -> subprocess.Popen[bytes]:
    """A real OpenLDAP server whose naming context (dc=<name>) says which mirror it is."""
    directory = tmp_path / name
    (directory / "db").mkdir(parents=True)
    conf = directory / "slapd.conf"
    conf.write_text(SLAPD_CONF.format(dir=directory, name=name))
    argv = [binary("slapd"), "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def naming_context(port: int) -> str:
    """Ask the root DSE through ``port`` with a real ldapsearch."""
    process = await asyncio.create_subprocess_exec(
        binary("ldapsearch"),
        "-x",
        "-H",
        f"ldap://127.0.0.1:{port}",
        "-b",
        "",
        "-s",
        "base",
        "namingContexts",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(10):
        output, _ = await process.communicate()
    found = re.search(r"^namingContexts: dc=(\S+)$", output.decode(), re.MULTILINE)
    assert process.returncode == 0 and found, output.decode()
    return found.group(1)


def test_real_ldap_mirrors_with_the_example_check(tmp_path: Path) -> None:
    """The example config's LDAP bind check against three real slapd mirrors."""
    from hakit.config import load_config

    *ports, listen_port = free_ports(4)
    servers = {
        name: start_slapd(tmp_path, name, port) for name, port in zip("abc", ports, strict=True)
    }
    example = load_config(EXAMPLE).tcp_proxy[0]
    cfg = example.model_copy(
        update={
            "listen": f"127.0.0.1:{listen_port}",
            "upstreams": tuple(f"127.0.0.1:{port}" for port in ports),
            "interval": 0.1,
            "timeout": 2.0,
        }
    )
    names = dict(zip(cfg.upstreams, "abc", strict=True))

    async def main() -> None:
        proxy = TcpProxy(cfg)
        _, port = await proxy.start("127.0.0.1", 0)
        try:
            await until(
                lambda: {proxy.health.state(u) for u in cfg.upstreams} == {HealthState.UP},
                "the example's bind check passes on every real slapd",
                timeout=20,
            )
            assert await naming_context(port) == "a"
            servers["a"].kill()  # the first mirror dies
            servers["a"].wait(10)
            assert await naming_context(port) == "b"
            await until(lambda: proxy.health.state(cfg.upstreams[0]) is HealthState.DOWN, "a down")
            assert await naming_context(port) == "b"
            assert {names[f["upstream"]] for f in proxy.flows()} <= {"b"}
        finally:
            await proxy.close()

    try:
        run(main())
    finally:
        for server in servers.values():
            if server.poll() is None:
                server.kill()
            server.wait(10)


# --- the command line ----------------------------------------------------------------------


def write_config(path: Path, router_port: int, proxy_port: int, mirrors: list[Mirror]) -> None:
    upstreams = ", ".join(f'"{m.address}"' for m in mirrors)
    path.write_text(
        f"""
[cluster]
mode = "restart-only"
state_dir = "state"

[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"

[router]
listen = "127.0.0.1:{router_port}"

[[nodes]]
name = "n1"
port = {free_ports(1)[0]}

[[tcp_proxy]]
name = "ldap"
listen = "127.0.0.1:{proxy_port}"
upstreams = [{upstreams}]
check = "send-expect"
send = "PING\\r\\n"
expect = '{CHECK_EXPECT}'
interval = 0.05
timeout = 0.5  # the wrong banner fails by timeout: it never matches
fall = 2
"""
    )


@pytest.mark.parametrize("command", ["router", "tcp-proxy"])
def test_hakit_command_runs_the_tcp_proxies(tmp_path: Path, command: str) -> None:
    a, b = Mirror("a", banner="NOT READY"), Mirror("b")
    router_port, proxy_port = free_ports(2)
    config = tmp_path / "hakit.toml"

    async def main() -> None:
        for mirror in (a, b):
            await mirror.start()
        write_config(config, router_port, proxy_port, [a, b])
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hakit",
            command,
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:  # until it listens and a's wrong banner failed its checks
                try:
                    client = await Client.open(proxy_port)
                except (OSError, AssertionError):
                    client = None
                if client is not None and client.mirror == "b":
                    break
                assert process.returncode is None, "the command exited"
                assert loop.time() < deadline, "no connection reached b through the proxy"
                await asyncio.sleep(0.05)
            assert await client.say("over the command") == "b: over the command"
            client.close()
        finally:
            if process.returncode is None:
                os.kill(process.pid, signal.SIGTERM)
            async with asyncio.timeout(10):
                _, stderr = await process.communicate()
            for mirror in (a, b):
                mirror.kill()
        assert process.returncode == 0, stderr.decode()
        assert "tcp proxy ldap listening" in stderr.decode()

    run(main())


# --- config checks -------------------------------------------------------------------------

BAD_PROXIES = """
[cluster]
mode = "restart-only"

[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"

[router]
listen = "127.0.0.1:8080"

[[nodes]]
name = "n1"
port = 8101

[[tcp_proxy]]
name = "ldap"
listen = "127.0.0.1:8080"
upstreams = ["127.0.0.1:389"]

[[tcp_proxy]]
name = "ldap"
listen = "127.0.0.1:1389"
upstreams = ["127.0.0.1:1389", "localhost:8101"]

[[tcp_proxy]]
name = "smtp"
listen = "0.0.0.0:8101"
upstreams = ["mail:25"]
check = "send-expect"
send = "EHLO hakit\\r\\n"
"""


def test_config_check_finds_tcp_proxy_mistakes(tmp_path: Path) -> None:
    from hakit.config import load_config
    from hakit.errors import ConfigError

    path = tmp_path / "hakit.toml"
    path.write_text(BAD_PROXIES)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}:19: tcp_proxy[0].listen: 127.0.0.1:8080 is also the address of router.listen; "
        "expected a host:port nothing else listens on",
        f'{path}:23: tcp_proxy[1].name: "ldap" is already the name of tcp_proxy[0]; expected '
        "a unique name per [[tcp_proxy]] (logs and status name it)",
        f"{path}:25: tcp_proxy[1].upstreams: 127.0.0.1:1389 is the proxy's own listen address; "
        "expected the upstreams' addresses (the proxy would connect to itself)",
        f'{path}:27: tcp_proxy[2].expect: check = "send-expect" needs expect (a regex the '
        'answer must match); expected e.g. expect = "^220 " or check = "tcp"',
    ]
    # Fixed, the same file loads; a wildcard listen on another port is fine.
    fixed = (
        BAD_PROXIES.replace(
            'listen = "127.0.0.1:8080"\nupstreams', 'listen = "127.0.0.1:3389"\nupstreams'
        )
        .replace(
            'name = "ldap"\nlisten = "127.0.0.1:1389"', 'name = "ldap2"\nlisten = "127.0.0.1:1389"'
        )
        .replace('"127.0.0.1:1389", "localhost', '"localhost')
        .replace('listen = "0.0.0.0:8101"', 'listen = "0.0.0.0:2525"')
        .replace('send = "EHLO', 'expect = "^220 "\nsend = "EHLO')
    )
    path.write_text(fixed)
    cfg = load_config(path)
    assert [p.name for p in cfg.tcp_proxy] == ["ldap", "ldap2", "smtp"]
    assert cfg.tcp_proxy[2].send == "EHLO hakit\r\n"
