"""``storage = "replicated"`` and ``[replication]``: defaults, each node's own home and
database, and the admin API every node must serve (file, line, key)."""

from __future__ import annotations

from pathlib import Path

from hakit.config import load_config
from hakit.config.values import Storage
from tests.unit.config.test_config import BASE, problems_of

TOKEN = '\n[admin]\ntoken = "0123456789abcdef0123"\n'


def replicated(text: str) -> str:
    return text.replace('mode = "cold-standby"', 'mode = "cold-standby"\nstorage = "replicated"')


def with_admin(text: str) -> str:
    return (
        text.replace("port = 8101\n", "port = 8101\nadmin_port = 9101\n").replace(
            "port = 8102\n", "port = 8102\nadmin_port = 9102\n"
        )
        + TOKEN
    )


def test_defaults_and_each_nodes_own_home_and_database(tmp_path: Path) -> None:
    text = replicated(with_admin(BASE)).replace(
        "port = 8102\n",
        'port = 8102\nhome = "n2/home"\ndatabase_url = "sqlite:///n2/home/data/app.db"\n',
    )
    path = tmp_path / "hakit.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.cluster.storage is Storage.REPLICATED
    section = cfg.replication
    assert (section.interval, section.max_lag, section.keep, section.prune_grace) == (
        30.0,
        300.0,
        3,
        600.0,
    )
    node1, node2 = cfg.nodes
    assert cfg.home_of(node1) == tmp_path / "home"
    assert cfg.database_url_of(node1) == f"sqlite:///{tmp_path / 'app.db'}"
    assert cfg.home_of(node2) == tmp_path / "n2" / "home"
    assert cfg.database_url_of(node2) == f"sqlite:///{tmp_path / 'n2/home/data/app.db'}"
    assert cfg.replication.repository(cfg.cluster.state_dir, "node2") == (
        tmp_path / "hakit-state" / "replication" / "node2"
    )


def test_replication_section_is_checked(tmp_path: Path) -> None:
    text = (
        replicated(with_admin(BASE))
        + '\n[replication]\ninterval = "10s"\nmax_lag = "1m"\nkeep = 0\n'
    )
    assert problems_of(tmp_path, text) == ["FILE:26: replication.keep: must be at least 1, got 0"]
    grace = replicated(with_admin(BASE)) + '\n[replication]\nkeep = 2\nprune_grace = "0s"\n'
    assert problems_of(tmp_path, grace) == [
        "FILE:25: replication.prune_grace: must be more than 0s, got 0s"
    ]


def test_replicated_storage_needs_every_admin_port_and_a_token(tmp_path: Path) -> None:
    text = replicated(BASE.replace("port = 8101\n", "port = 8101\nadmin_port = 9101\n"))
    found = problems_of(tmp_path, text)
    assert found[0].startswith('FILE:3: cluster.storage: storage = "replicated": standbys pull')
    assert "[admin] has no token" in found[0]
    assert found[-1] == (
        'FILE:15: nodes[1]: node2 has no admin_port, but storage = "replicated" needs every '
        "node's agent to serve its repository over the admin API; expected admin_port = PORT "
        "on every node"
    )


def test_a_nodes_database_url_is_checked_like_apps(tmp_path: Path) -> None:
    text = with_admin(BASE).replace("port = 8102\n", 'port = 8102\ndatabase_url = "oracle://x"\n')
    (line,) = problems_of(tmp_path, text)
    assert "nodes[1].database_url" in line and "is not supported" in line


def test_two_nodes_on_one_postgresql_database_are_refused(tmp_path: Path) -> None:
    shared = BASE.replace(
        '"sqlite:///app.db"', '"postgresql://app@db.example:5433/app"'
    )  # one server every node reaches: the same database for both
    (line,) = problems_of(tmp_path, replicated(with_admin(shared)))
    assert line == (
        "FILE:15: nodes[1]: node2 and node1 use the same PostgreSQL database app on "
        "db.example:5433, but storage = \"replicated\" needs each node's own (a standby's "
        "apply renames its database); expected database_url naming another database or "
        "server for node2"
    )


def test_each_nodes_own_postgresql_database_is_accepted(tmp_path: Path) -> None:
    # localhost on each host: each node's own server (the nodes' hosts differ).
    local = replicated(with_admin(BASE)).replace(
        '"sqlite:///app.db"', '"postgresql://app@localhost/app"'
    )
    local = local.replace("port = 8102\n", 'port = 8102\nhost = "10.0.0.2"\n', 1)
    path = tmp_path / "hakit.toml"
    path.write_text(local.replace("port = 8101\n", 'port = 8101\nhost = "10.0.0.1"\n', 1))
    assert load_config(path).cluster.storage is Storage.REPLICATED
    # One server, a database per node (a test stand-in for two servers).
    own = replicated(with_admin(BASE)).replace(
        "port = 8102\n", 'port = 8102\ndatabase_url = "postgresql://app@127.0.0.1/app_node2"\n'
    )
    path.write_text(own.replace('"sqlite:///app.db"', '"postgresql://app@127.0.0.1/app_node1"'))
    assert load_config(path).database_url_of(load_config(path).nodes[1]).endswith("/app_node2")
    # Both on 127.0.0.1 of one host, one database: refused, on node2's own key.
    same = own.replace("/app_node2", "/app_node1").replace(
        '"sqlite:///app.db"', '"postgresql://app@127.0.0.1/app_node1"'
    )
    (line,) = problems_of(tmp_path, same)
    assert "nodes[1].database_url: node2 and node1 use the same PostgreSQL database" in line
