"""Operator commands on a real SQLite store: checks, intents, history; the admin API over
real HTTP on loopback; the agents' intent watcher. No agents run here (see tests/e2e)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from hakit.cli import app
from hakit.config import AdminConfig, AppConfig, ClusterConfig, Config, NodeConfig
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.keys import HANDOVER, PAUSED
from hakit.coord.sqlite import SqliteCoordinator
from hakit.demo.cluster import free_ports
from hakit.errors import HakitError
from hakit.operator.admin_api import AdminApi, authorized, load_token
from hakit.operator.client import AdminClient
from hakit.operator.commands import OperatorError, perform, status_document
from hakit.operator.intents import (
    IntentWatcher,
    handover_event,
    operator_actor,
    request_path_loss,
)
from hakit.policy.vocabulary import HandoverEnded, HandoverRequested, LeaseVacant, Paused, Resumed

TOKEN = "s3cret-token-0123456789"
NOW = 1_700_000_000.0
STORE_TIME = [NOW]  # the store's clock in these tests


def make_config(root: Path, admin_ports: tuple[int | None, ...] = (None, None, None)) -> Config:
    return Config(
        cluster=ClusterConfig(name="ops", state_dir=root / "state"),
        app=AppConfig(start=("app",), home=root / "home", database_url="sqlite:///x.db"),
        nodes=(
            NodeConfig(name="node1", port=8101, admin_port=admin_ports[0]),
            NodeConfig(name="node2", port=8102, admin_port=admin_ports[1]),
            NodeConfig(name="node3", port=8103, admin_port=admin_ports[2], tags=("nofailover",)),
        ),
        admin=AdminConfig(token=TOKEN),
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def store(cfg: Config) -> Iterator[SqliteCoordinator]:
    cfg.coordination_path.parent.mkdir(parents=True)
    STORE_TIME[0] = NOW
    coordinator = SqliteCoordinator(cfg.coordination_path, clock=lambda: STORE_TIME[0])
    try:
        yield coordinator
    finally:
        coordinator.close()


def running_cluster(store: SqliteCoordinator, at: float = NOW) -> int:
    """node1 active under the lease, node2 and node3 live standbys, their records stored
    at ``at`` (the store's clock: record ages are its judgement). Returns the epoch."""
    lease = store.acquire_or_renew("node1", 60)
    assert lease is not None
    STORE_TIME[0] = at
    store.publish_node(NodeRecord("node1", "active", "RUNNING", lease.epoch, at, {"pid": 11}))
    for name in ("node2", "node3"):
        store.publish_node(NodeRecord(name, "standby", "STOPPED", 0, at, {"policy": "STANDBY"}))
    STORE_TIME[0] = NOW
    return lease.epoch


def ask(store: SqliteCoordinator, cfg: Config, op: str, **params: Any) -> dict[str, Any]:
    return perform(store, cfg, op, {"actor": "alice", **params}, NOW + 1)


# --- checks and intents -------------------------------------------------------------------


def test_switchover_writes_the_intent_and_records_who_and_why(store, cfg) -> None:
    epoch = running_cluster(store)
    answer = ask(store, cfg, "switchover", to="node2", reason="kernel patch")
    intent = store.get_state(HANDOVER)
    assert intent == answer["handover"]
    assert intent is not None
    assert (intent["kind"], intent["source"], intent["target"], intent["epoch"]) == (
        "switchover",
        "node1",
        "node2",
        epoch,
    )
    assert intent["actor"] == "operator:alice" and intent["reason"] == "kernel patch"
    assert intent["expires_at"] > NOW + 1
    (event,) = store.events()
    assert (event.kind, event.node, event.actor) == ("switchover", "node2", "operator:alice")
    assert event.reason == (
        "operator:alice asked for a switchover from node1 to node2 (kernel patch)"
    )


def test_the_handover_intent_expires_by_the_stores_clock_not_the_readers(store, cfg) -> None:
    """The intent lives for the handover timeout on the store's clock: an agent whose clock
    is an hour ahead (or behind) still sees it while it lasts, and nobody once it is over."""
    running_cluster(store)
    intent = ask(store, cfg, "switchover", to="node2")["handover"]
    assert intent["expiring"] is True
    timeout = intent["expires_at"] - intent["requested_at"]
    for skew in (-3600.0, 3600.0):
        watcher = IntentWatcher()
        events, expired = watcher.observe(store.cluster_state(), None, NOW + 1 + skew)
        assert [type(event) for event in events] == [HandoverRequested] and expired is None
    STORE_TIME[0] = NOW + timeout - 0.5
    assert store.get_state(HANDOVER) == intent
    STORE_TIME[0] = NOW + timeout + 0.5
    assert store.get_state(HANDOVER) is None
    events, expired = watcher.observe(store.cluster_state(), None, NOW - 3600.0)
    assert events == [HandoverEnded("switchover to node2 ended")] and expired is None


@pytest.mark.parametrize(
    ("op", "target", "status", "words"),
    [
        ("switchover", "node9", 404, "no node named 'node9'"),
        ("switchover", "node3", 409, "node3 has the nofailover tag"),
        ("failover", "node1", 409, "node1 is already active"),
        ("switchover", "", 400, "needs a target node"),
    ],
)
def test_handover_refusals(store, cfg, op: str, target: str, status: int, words: str) -> None:
    running_cluster(store)
    with pytest.raises(OperatorError) as caught:
        ask(store, cfg, op, to=target)
    assert caught.value.status == status and words in str(caught.value)
    assert store.get_state(HANDOVER) is None and not store.events()


def test_switchover_needs_an_active_node_failover_does_not(store, cfg) -> None:
    store.publish_node(NodeRecord("node2", "standby", "STOPPED", 0, NOW, {}))
    with pytest.raises(OperatorError, match="hakit failover --to node2"):
        ask(store, cfg, "switchover", to="node2")
    assert ask(store, cfg, "failover", to="node2")["handover"]["source"] == ""


def test_target_agent_must_be_alive_and_able(store, cfg) -> None:
    running_cluster(store, at=NOW - 60)  # nobody reported for a minute
    # 60 s by the store's clock (the operator's own clock, NOW + 1, is not compared).
    with pytest.raises(OperatorError, match="its agent last reported 60 s ago"):
        ask(store, cfg, "switchover", to="node2")
    store.publish_node(NodeRecord("node2", "stopped", "STOPPED", 0, NOW, {}))
    with pytest.raises(OperatorError, match="its agent is not running"):
        ask(store, cfg, "failover", to="node2")
    store.publish_node(NodeRecord("node2", "standby", "STOPPED", 0, NOW, {"policy": "MANUAL"}))
    with pytest.raises(OperatorError, match="manual intervention needed"):
        ask(store, cfg, "failover", to="node2")


def test_one_switchover_at_a_time_but_a_failover_overrides(store, cfg) -> None:
    running_cluster(store)
    first = ask(store, cfg, "switchover", to="node2")["handover"]
    with pytest.raises(OperatorError, match="in progress"):
        ask(store, cfg, "switchover", to="node2")
    forced = ask(store, cfg, "failover", to="node2", force=True)["handover"]
    assert forced["id"] != first["id"] and forced["kind"] == "failover" and forced["force"]
    assert "without fencing the old active" in store.events()[-1].reason


def test_pause_and_resume_are_recorded_once(store, cfg) -> None:
    running_cluster(store)
    assert ask(store, cfg, "pause", reason="upgrade")["changed"]
    assert not ask(store, cfg, "pause")["changed"]
    assert store.get_state(PAUSED) == {
        "paused": True,
        "actor": "operator:alice",
        "reason": "upgrade",
        "at": NOW + 1,
    }
    assert ask(store, cfg, "resume")["changed"]
    assert not ask(store, cfg, "resume")["changed"]
    reasons = [e.reason for e in store.events()]
    assert reasons == [
        "operator:alice paused the cluster (upgrade): agents keep monitoring and take no "
        "action (no restart, no failover, no start) until resumed",
        "operator:alice resumed the cluster (no reason given): agents act on failures again",
    ]


def test_status_document(store, cfg) -> None:
    epoch = running_cluster(store)
    ask(store, cfg, "pause", reason="upgrade")
    doc = status_document(store, cfg, NOW + 2, events=1)
    assert (doc["leader"], doc["epoch"]) == ("node1", epoch)
    assert doc["paused"]["actor"] == "operator:alice" and doc["handover"] is None
    assert [n["node"] for n in doc["nodes"]] == ["node1", "node2", "node3"]
    assert doc["nodes"][0]["pid"] == 11 and doc["nodes"][2]["no_failover"]
    assert [e["kind"] for e in doc["events"]] == ["pause"]
    ask(store, cfg, "resume")
    assert status_document(store, cfg, NOW + 3)["paused"] is None


def test_unknown_operation(store, cfg) -> None:
    with pytest.raises(OperatorError, match="unknown operation"):
        ask(store, cfg, "reboot")


def test_operator_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "bob")
    assert operator_actor() == "operator:bob"
    assert operator_actor("carol") == "operator:carol"
    assert operator_actor("operator:dave") == "operator:dave"


def test_token_file(tmp_path: Path) -> None:
    base = make_config(tmp_path)
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    with_file = base.model_copy(update={"admin": AdminConfig(token_file=path)})
    assert load_token(with_file) == TOKEN
    path.write_text("short\n")
    with pytest.raises(HakitError, match="shorter than 16"):
        load_token(with_file)
    missing = base.model_copy(update={"admin": AdminConfig(token_file=tmp_path / "none")})
    with pytest.raises(HakitError, match="cannot read it"):
        load_token(missing)
    assert load_token(base.model_copy(update={"admin": AdminConfig()})) is None


# --- what agents read each turn ------------------------------------------------------------


def test_intent_watcher_feeds_each_change_once() -> None:
    watcher = IntentWatcher()
    held = Lease.as_read("node1", 3, NOW + 10, NOW)
    assert watcher.observe({}, held, NOW) == ([], None)
    pause = {PAUSED: {"paused": True, "actor": "operator:alice", "reason": "upgrade"}}
    assert watcher.observe(pause, held, NOW) == ([Paused("operator:alice", "upgrade")], None)
    assert watcher.observe(pause, held, NOW) == ([], None)
    # The active dies while paused: the lease runs out (as the store judges it); said once.
    ended = Lease.as_read("node1", 3, NOW + 10, NOW + 11)
    assert watcher.observe(pause, ended, NOW + 11) == ([LeaseVacant()], None)
    assert watcher.observe(pause, None, NOW + 12) == ([], None)
    intent = {
        "id": "x",
        "kind": "switchover",
        "source": "node1",
        "target": "node2",
        "epoch": 3,
        "actor": "operator:alice",
        "reason": "patch",
        "expires_at": NOW + 60,
    }
    state = {PAUSED: {"paused": False, "actor": "operator:bob"}, HANDOVER: intent}
    events, expired = watcher.observe(state, held, NOW + 13)
    assert events == [
        Resumed("operator:bob", "no reason given"),
        HandoverRequested("node2", "node1", 3, False, "operator:alice", "patch"),
    ]
    assert expired is None and watcher.observe(state, held, NOW + 14) == ([], None)
    events, expired = watcher.observe(state, held, NOW + 61)
    assert events == [HandoverEnded("switchover to node2 expired")] and expired == intent
    assert watcher.observe({}, held, NOW + 62) == ([], None)


def test_handover_event_of_a_forced_failover() -> None:
    event = handover_event({"kind": "failover", "target": "node2", "source": None, "epoch": None})
    assert event == HandoverRequested("node2", "", 0, True, "operator", "no reason given")


# --- the admin API over real HTTP -------------------------------------------------------------


async def _serve(store: SqliteCoordinator, cfg: Config) -> tuple[AdminApi, str]:
    async def run(operation: str, params: Any) -> dict[str, Any]:
        return await asyncio.to_thread(perform, store, cfg, operation, params, time.time())

    api = AdminApi(TOKEN, run)
    host, port = await api.start("127.0.0.1", 0)
    return api, f"http://{host}:{port}"


def test_admin_api_authenticates_and_routes(store, cfg) -> None:
    running_cluster(store, at=time.time())

    async def scenario() -> None:
        api, base = await _serve(store, cfg)
        good = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                    answer = await client.post("/pause", headers=headers, json={})
                    assert answer.status_code == 401
                    assert answer.headers["www-authenticate"].startswith("Bearer")
                    assert "admin token" in answer.json()["error"]
                assert store.get_state(PAUSED) is None  # nothing happened without the token
                answer = await client.get("/nowhere", headers=good)
                assert answer.status_code == 404
                answer = await client.get("/pause", headers=good)
                assert answer.status_code == 405 and answer.headers["allow"] == "POST"
                answer = await client.post("/pause", headers=good, content=b"{not json")
                assert answer.status_code == 400
                answer = await client.post("/switchover", headers=good, json={"to": "node3"})
                assert answer.status_code == 409 and "nofailover" in answer.json()["error"]
                answer = await client.post(
                    "/pause", headers=good, json={"actor": "operator:alice", "reason": "x"}
                )
                assert answer.status_code == 200 and answer.json()["paused"]
                answer = await client.get("/status", headers=good)
                assert answer.status_code == 200 and answer.json()["paused"]["reason"] == "x"
        finally:
            await api.close()

    asyncio.run(scenario())
    assert store.events()[-1].actor == "operator:alice"


def test_admin_client_tries_each_node_until_one_answers(tmp_path: Path, store) -> None:
    running_cluster(store, at=time.time())
    (dead_port,) = free_ports(1)  # nothing listens there

    async def scenario() -> dict[str, Any]:
        api, base = await _serve(store, make_config(tmp_path))
        port = int(base.rsplit(":", 1)[1])
        try:
            client = AdminClient(make_config(tmp_path, (dead_port, port, None)), TOKEN)
            answer = await asyncio.to_thread(client.call, "pause", {"actor": "operator:eve"})
            with pytest.raises(OperatorError) as caught:
                await asyncio.to_thread(client.call, "failover", {"to": "node3"})
            assert caught.value.status == 409
            bad = AdminClient(make_config(tmp_path, (port, None, None)), "x" * 20)
            with pytest.raises(OperatorError, match="admin token"):
                await asyncio.to_thread(bad.call, "status")
            return answer
        finally:
            await api.close()

    assert asyncio.run(scenario())["changed"]
    lonely = AdminClient(make_config(tmp_path, (dead_port, None, None)), TOKEN)
    with pytest.raises(OperatorError, match="no agent's admin API answered"):
        lonely.call("status")


def test_authorized() -> None:
    assert authorized(f"Bearer {TOKEN}", TOKEN) and authorized(f"bearer  {TOKEN} ", TOKEN)
    assert not authorized(None, TOKEN) and not authorized(f"Basic {TOKEN}", TOKEN)
    assert not authorized("Bearer", TOKEN) and not authorized(f"Bearer {TOKEN}x", TOKEN)


# --- the CLI on the store directly (no admin_port configured) -------------------------------------


def test_cli_pause_resume_status_through_the_store(tmp_path: Path) -> None:
    config = tmp_path / "hakit.toml"
    config.write_text(
        """
[cluster]
name = "cli"
state_dir = "state"
[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"
[[nodes]]
name = "node1"
port = 18101
[[nodes]]
name = "node2"
port = 18102
nofailover = true
"""
    )
    runner = CliRunner()
    result = runner.invoke(app, ["pause", "-c", str(config), "--as", "zoe", "-r", "backup"])
    assert result.exit_code == 0, result.output
    assert "operator:zoe paused the cluster (backup)" in result.output
    result = runner.invoke(app, ["status", "-c", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "paused: yes, by operator:zoe" in result.output and "(backup)" in result.output
    assert "nofailover" in result.output
    assert "operator:zoe paused the cluster" in result.output  # among the last events
    result = runner.invoke(app, ["switchover", "--to", "node2", "-c", str(config)])
    assert result.exit_code == 1 and "nofailover" in result.output
    result = runner.invoke(app, ["resume", "-c", str(config)], env={"USER": "yann"})
    assert result.exit_code == 0 and "operator:yann resumed the cluster" in result.output


def test_admin_client_asks_the_target_first_then_whoever_answered_last(tmp_path: Path) -> None:
    client = AdminClient(make_config(tmp_path, (9001, 9002, 9003)), TOKEN)
    urls = [f"http://127.0.0.1:{port}" for port in (9001, 9002, 9003)]
    assert client.endpoints() == urls
    assert client.endpoints("node2") == [urls[1], urls[0], urls[2]]
    client.answered = urls[2]
    assert client.endpoints() == [urls[2], urls[0], urls[1]]
    assert client.endpoints("node2")[0] == urls[1]


# --- config: [admin] and nofailover -------------------------------------------------------------

BASE_TOML = """
[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"
"""


def load_toml(tmp_path: Path, text: str) -> Config:
    from hakit.config import load_config

    path = tmp_path / "hakit.toml"
    path.write_text(BASE_TOML + text)
    return load_config(path)


def test_config_admin_port_needs_a_token(tmp_path: Path) -> None:
    from hakit.errors import ConfigError

    nodes = '[[nodes]]\nname = "a"\nport = 1\nadmin_port = 2\n[[nodes]]\nname = "b"\nport = 3\n'
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.admin_port: a serves the admin API"):
        load_toml(tmp_path, nodes)
    cfg = load_toml(tmp_path, '[admin]\ntoken_file = "secret/token"\n' + nodes)
    assert cfg.admin.token_file == tmp_path / "secret" / "token"  # relative to the file
    with pytest.raises(ConfigError, match="token and token_file are both set"):
        load_toml(tmp_path, f'[admin]\ntoken = "{TOKEN}"\ntoken_file = "t"\n' + nodes)
    with pytest.raises(ConfigError, match=r"admin\.token"):
        load_toml(tmp_path, '[admin]\ntoken = "short"\n' + nodes)


def test_config_nofailover_flag_or_tag_and_not_on_every_node(tmp_path: Path) -> None:
    from hakit.errors import ConfigError

    cfg = load_toml(
        tmp_path,
        '[[nodes]]\nname = "a"\nport = 1\n'
        '[[nodes]]\nname = "b"\nport = 3\ntags = ["nofailover", "dr-site"]\n'
        '[[nodes]]\nname = "c"\nport = 5\nnofailover = true\n',
    )
    assert [n.no_failover for n in cfg.nodes] == [False, True, True]
    with pytest.raises(ConfigError, match="every node is nofailover"):
        load_toml(
            tmp_path,
            '[[nodes]]\nname = "a"\nport = 1\nnofailover = true\n'
            '[[nodes]]\nname = "b"\nport = 3\ntags = ["nofailover"]\n',
        )


# --- the agent's side: what it queues at boot --------------------------------------------------


def test_agent_at_boot_hears_the_pause_first_then_boots_then_the_handover(store, cfg) -> None:
    from hakit.agent import Agent
    from hakit.notify import notifier_from_config
    from hakit.policy.vocabulary import Boot

    running_cluster(store, at=time.time())
    ask(store, cfg, "pause", reason="upgrade")
    store.set_state(
        HANDOVER,
        {
            "id": "h",
            "kind": "switchover",
            "source": "node1",
            "target": "node2",
            "epoch": 1,
            "expires_at": time.time() + 60,
        },
    )
    store.release("node1", 1)  # a cold start: no valid lease
    store.publish_node(NodeRecord("node1", "stopped", "STOPPED", 0, NOW, {"served_epoch": 4}))
    store.publish_node(NodeRecord("node2", "stopped", "STOPPED", 0, NOW, {"served_epoch": 2}))

    async def boot() -> list[object]:
        agent = Agent(cfg, "node2", store, notifier_from_config(cfg))
        read, boot = await agent.operator.read_intents(), await agent._boot_event()
        await agent.operator.feed_intents(read, time.time(), boot=boot)
        agent.store.close()
        queued = []
        while not agent.events.empty():
            queued.append(agent.events.get_nowait())
        await agent.prober.aclose()
        return queued

    queued = asyncio.run(boot())
    assert [type(event).__name__ for event in queued] == [
        "Paused",
        "Boot",
        "HandoverRequested",
        "LeaseVacant",
    ]
    assert queued[1] == Boot(served_epoch=2, newest_epoch=4, newest_node="node1")


def test_path_loss_intent_is_a_switchover_asked_by_the_agent(
    store: SqliteCoordinator, cfg: Config
) -> None:
    epoch = running_cluster(store)
    intent = request_path_loss(store, cfg, "node1", "node2", epoch, "router r1 lost node1", NOW)
    assert intent is not None and store.get_state(HANDOVER) == intent
    assert (intent["kind"], intent["actor"], intent["source"]) == (
        "path-loss",
        "agent:node1",
        "node1",
    )
    event = handover_event(intent)
    assert not event.forced and event.automatic and event.kind == "path-loss"
    assert event.reason == "router r1 lost node1" and event.target == "node2"


def test_path_loss_never_replaces_a_handover_in_force(
    store: SqliteCoordinator, cfg: Config
) -> None:
    epoch = running_cluster(store)
    ask(store, cfg, "switchover", to="node2", reason="patch")
    operator = store.get_state(HANDOVER)
    assert request_path_loss(store, cfg, "node1", "node2", epoch, "lost", NOW + 2) is None
    assert store.get_state(HANDOVER) == operator
    # The agent's clock being far ahead proves nothing: the store's decides.
    later = NOW + 10_000
    assert request_path_loss(store, cfg, "node1", "node2", epoch, "lost", later) is None
    # Once it expired (the store forgot it), the agent may ask.
    STORE_TIME[0] = NOW + 10_000
    assert request_path_loss(store, cfg, "node1", "node2", epoch, "lost", NOW + 3) is not None
