"""hakit.toml loading: examples load, every mistake is reported with file, line, key, expectation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hakit.config import (
    Config,
    HealthCheckConfig,
    Mode,
    OnFailedStart,
    format_duration,
    load_config,
    parse_duration,
    parse_listen,
)
from hakit.config.check import describe_config, same_machine_address
from hakit.config.toml_positions import key_lines, locate, syntax_error_position
from hakit.coord.registry import names as backend_names
from hakit.errors import ConfigError

# What an unknown backend's message lists: every registered one (hakit.coord.registry).
KNOWN_BACKENDS = "one of " + ", ".join(f'"{name}"' for name in backend_names())
EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.toml"))

# A valid two-node file; the cases below change one thing. Line numbers:
#  1 [cluster]  2 mode  4 [app]  5 start  6 home  7 database_url
#  9 [[nodes]]  10 name  11 port  13 [[nodes]]  14 name  15 port
BASE = """\
[cluster]
mode = "cold-standby"

[app]
start = ["python3", "-m", "hakit.demo", "--port", "{port}"]
home = "home"
database_url = "sqlite:///app.db"

[[nodes]]
name = "node1"
port = 8101

[[nodes]]
name = "node2"
port = 8102
"""


def problems_of(tmp_path: Path, text: str) -> list[str]:
    """The problem lines for ``text`` saved as hakit.toml, with the path shown as FILE."""
    path = tmp_path / "hakit.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return [problem.replace(str(path), "FILE") for problem in caught.value.problems]


def changed(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# --- the examples ---------------------------------------------------------------


def test_there_are_examples_for_each_documented_setup() -> None:
    names = {path.name for path in EXAMPLES}
    assert {
        "two-node-cold-standby.toml",
        "restart-only.toml",
        "postgres-cold-standby.toml",
        "health-url.toml",
        "health-command.toml",
    } <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_loads_and_describes_itself(example: Path) -> None:
    cfg = load_config(example)
    assert cfg.source == example.absolute()
    assert cfg.cluster.state_dir.is_absolute() and cfg.app.home.is_absolute()
    summary = describe_config(cfg)
    assert summary[0].startswith(f"cluster {cfg.cluster.name}: {cfg.cluster.mode}")
    assert all(any(node.name in line for line in summary) for node in cfg.nodes)


def test_examples_cover_each_health_check_way() -> None:
    checks = {path.name: load_config(path).app.health for path in EXAMPLES}
    assert checks["two-node-cold-standby.toml"].status_url == "http://{host}:{port}/status"
    url_check = checks["health-url.toml"]
    assert (url_check.url, url_check.expect_status) == ("http://{host}:{port}/api/healthz", 200)
    assert url_check.expect_body == r'"status":\s*"pass"'
    assert checks["health-command.toml"].command is not None
    assert load_config(EXAMPLES[0]).cluster.mode in set(Mode)


# --- mistakes, one each, with the whole message -----------------------------------

MISTAKES = [
    pytest.param(
        changed("port = 8102", 'port = "8102x"'),
        ['FILE:15: nodes[1].port: got the string "8102x"; expected an integer'],
        id="wrong-type",
    ),
    pytest.param(
        BASE + '\n[health]\nintervall = "1s"\n',
        ["FILE:18: health.intervall: unknown key; did you mean interval?"],
        id="unknown-key-with-suggestion",
    ),
    pytest.param(
        changed('home = "home"', 'home = "home"\ninterval = "2s"'),
        ["FILE:7: app.interval: unknown key here; did you mean interval in [health]?"],
        id="key-in-the-wrong-table",
    ),
    pytest.param(
        BASE + '\n[health]\ninterval = "15 sec"\n',
        [
            'FILE:18: health.interval: "15 sec" is not a duration; expected a number of '
            'seconds or a string such as "15s", "2m" or "500ms"'
        ],
        id="bad-duration",
    ),
    pytest.param(
        changed('name = "node2"', 'name = "node1"'),
        [
            'FILE:14: nodes[1].name: "node1" is already the name of nodes[0]; expected a unique name per node'
        ],
        id="duplicate-node-name",
    ),
    pytest.param(
        changed("port = 8102", "port = 8101"),
        [
            "FILE:15: nodes[1].port: 8101 is already used by node1 on 127.0.0.1; "
            "expected a port nothing else uses on that host"
        ],
        id="duplicate-port",
    ),
    pytest.param(
        changed('mode = "cold-standby"', 'mode = "hot-standby"'),
        [
            'FILE:2: cluster.mode: the string "hot-standby" is not a valid mode; expected one of: '
            "restart-only, cold-standby, warm-standby, active-active"
        ],
        id="invalid-mode",
    ),
    pytest.param(
        changed('home = "home"\n', ""),
        [
            "FILE:4: app.home: required key is missing; expected the app's home directory "
            "(relative to this file)"
        ],
        id="missing-required-key",
    ),
    pytest.param(
        BASE + '\n[app.health]\nstatus_url = "http://{host}:{port}/status"\ncommand = ["check"]\n',
        [
            "FILE:19: app.health.command: status_url and command are both set; expected exactly "
            "one of status_url (the /status contract), url (with expect_status and/or "
            "expect_body) or command"
        ],
        id="two-health-ways",
    ),
    pytest.param(
        BASE + '\n[app.health]\nurl = "http://{host}:{port}/ping"\nexpect_body = "(OK"\n',
        [
            'FILE:19: app.health.expect_body: "(OK" is not a valid regular expression (missing ), '
            'unterminated subpattern at position 0); expected a Python regex such as "RUNNING|OK"'
        ],
        id="invalid-regex",
    ),
    pytest.param(
        BASE + '\n[coordination]\nlease_ttl = "2s"\nrenew_interval = "1s"\n',
        [
            "FILE:19: coordination.renew_interval: 1s is too close to lease_ttl 2s; expected "
            'renew_interval * 2 < lease_ttl (e.g. renew_interval = "1s" with lease_ttl = "3s") '
            "so that the lease survives one missed renewal"
        ],
        id="renew-interval-vs-lease-ttl",
    ),
    pytest.param(
        changed('mode = "cold-standby"', 'mode = "restart-only"'),
        [
            "FILE:2: cluster.mode: restart-only runs exactly one node, but 2 [[nodes]] tables are "
            'configured; expected one [[nodes]] table, or mode = "cold-standby" for several nodes'
        ],
        id="restart-only-with-two-nodes",
    ),
    pytest.param(
        changed('[cluster]\nmode = "cold-standby"', "[cluster]").split(
            '\n[[nodes]]\nname = "node2"'
        )[0],
        [
            "FILE:1: cluster.mode: cold-standby (the default mode) needs at least two nodes (an "
            "active one and a standby), but 1 [[nodes]] table is configured; expected a second "
            '[[nodes]] table, or mode = "restart-only"'
        ],
        id="standby-with-one-node",
    ),
    pytest.param(
        changed('"sqlite:///app.db"', '"oracle://jira:secret@db/jira"'),
        [
            'FILE:7: app.database_url: "oracle://jira:***@db/jira": scheme "oracle" is not '
            'supported; expected "sqlite:///PATH", "postgresql://USER@HOST/DATABASE" or '
            '"mysql://USER:PASSWORD@HOST/DATABASE" (or mariadb://), or no database_url at all'
        ],
        id="bad-database-url-scheme",
    ),
    pytest.param(
        changed('home = "home"', 'home = "home'),
        [
            "FILE:6: TOML syntax error: Illegal character '\\n' at column 13; expected valid "
            "TOML (https://toml.io)"
        ],
        id="toml-syntax-error",
    ),
    pytest.param(
        BASE.split("\n[[nodes]]")[0] + "\n",
        [
            "FILE:1: nodes: required key is missing; expected at least one [[nodes]] table with name and port"
        ],
        id="nodes-missing-entirely",
    ),
    pytest.param(
        BASE + '\n[router]\nlisten = "127.0.0.1:8102"\n',
        [
            "FILE:18: router.listen: 127.0.0.1:8102 is also the address of node node2 "
            "(nodes[1]); expected a host:port no node uses"
        ],
        id="router-listens-on-a-node-address",
    ),
    pytest.param(
        BASE + '\n[health]\ninterval = "5s"\ntimeout = "2s"\n',
        [
            "FILE:19: health.timeout: 2s is shorter than interval 5s; expected timeout >= interval "
            "(failures must span at least one probe interval before they count)"
        ],
        id="health-timeout-below-interval",
    ),
    pytest.param(
        BASE + '\n[coordination]\nbackend = "etcd"\n\n[coordination.etcd]\n'
        'prefix = "/hakit"\nendpoints = ["127.0.0.1:2379"]\n',
        [
            'FILE:22: coordination.etcd.endpoints: "127.0.0.1:2379" is not an etcd client URL; '
            'expected "http://host:port" or "https://host:port"'
        ],
        id="etcd-endpoint-without-scheme",
    ),
    pytest.param(
        BASE + '\n[coordination.etcd]\nprefix = "hakit/"\n',
        [
            'FILE:18: coordination.etcd.prefix: "hakit/" is not a key prefix; expected "/name" '
            "(e.g. \"/hakit\"), starting with '/' and not ending with one"
        ],
        id="etcd-prefix",
    ),
    pytest.param(
        BASE + '\n[coordination.etcd]\ncert = "/etc/hakit/client.pem"\n',
        ["FILE:17: coordination.etcd: cert and key go together; expected both or neither"],
        id="etcd-cert-without-key",
    ),
    pytest.param(
        BASE + '\n[coordination.etcd]\nca_cert = "ca.pem"\n',
        ['FILE:18: coordination.etcd.ca_cert: "ca.pem" is relative; expected an absolute path'],
        id="etcd-relative-ca",
    ),
    pytest.param(
        BASE + '\n[coordination.etcd]\ntimeout = "2s"\n',
        ['FILE:18: coordination.etcd.timeout: got the string "2s"; expected a number'],
        id="etcd-timeout-not-seconds",
    ),
    pytest.param(
        BASE + '\n[coordination]\nbackend = "consul"\n',
        [f'FILE:18: coordination.backend: "consul" is not a backend; expected {KNOWN_BACKENDS}'],
        id="unknown-backend",
    ),
    pytest.param(
        BASE + '\n[coordination.sqlite]\npath = "x.db"\nbusy = 3\n',
        ["FILE:19: coordination.sqlite.busy: unknown key; expected one of: path"],
        id="backend-section-unknown-key",
    ),
    pytest.param(
        BASE + '\n[coordination]\npath = "a.db"\n\n[coordination.sqlite]\npath = "b.db"\n',
        [
            "FILE:18: coordination.path: given twice, here and in [coordination.sqlite]; "
            "expected only [coordination.sqlite] path"
        ],
        id="sqlite-path-twice",
    ),
    pytest.param(
        changed('home = "home"', 'home = "home"\nenv = { JAVA_OPTS = "-Xmx1g", WORKERS = 4 }'),
        ["FILE:7: app.env.WORKERS: got the integer 4; expected a string"],
        id="inline-table-value",
    ),
    pytest.param(
        changed('start = ["python3", "-m", "hakit.demo", "--port", "{port}"]', "start = []"),
        [
            "FILE:5: app.start: the command is an empty list; expected a list of strings such as "
            '["./bin/start", "--port", "{port}"] or one shell string'
        ],
        id="empty-start-command",
    ),
    pytest.param(
        BASE + "\n[health]\nfall = 0\n",
        ["FILE:18: health.fall: must be at least 1, got 0"],
        id="below-minimum",
    ),
    pytest.param(
        changed('name = "node2"', 'name = "node2"\nroute = "n 2"'),
        [
            'FILE:15: nodes[1].route: the string "n 2" is not allowed; expected letters, digits, '
            "'_' or '-' only (the route goes into cookies)"
        ],
        id="route-pattern",
    ),
    pytest.param(
        BASE + "\n[failover]\nauto_failback = true\n",
        [
            "FILE:18: failover.auto_failback: automatic failback is not supported: a failed "
            "node stays standby; move it back with hakit switchover (expected false, or leave "
            "it out)"
        ],
        id="auto-failback",
    ),
    pytest.param(
        BASE + '\n[failover]\non_failed_start = "retry"\n',
        [
            'FILE:18: failover.on_failed_start: the string "retry" is not a valid '
            "on_failed_start; expected one of: alert, failover"
        ],
        id="on-failed-start",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MISTAKES)
def test_each_mistake_is_reported_with_file_line_key_and_expectation(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    assert problems_of(tmp_path, text) == expected


def test_all_problems_are_reported_at_once_in_file_order(tmp_path: Path) -> None:
    text = (
        changed("port = 8102", "port = 8101")
        .replace('mode = "cold-standby"', 'mode = "cold-standby"\nnmae = "x"')
        .replace('"sqlite:///app.db"', '"sqlite://app.db"')
    ) + '\n[health]\nfall = 0\ninterval = "fast"\n'
    problems = problems_of(tmp_path, text)
    assert [p.split(": ")[0:2] for p in problems] == [
        ["FILE:3", "cluster.nmae"],
        ["FILE:8", "app.database_url"],
        ["FILE:16", "nodes[1].port"],
        ["FILE:19", "health.fall"],
        ["FILE:20", "health.interval"],
    ]
    assert "needs three slashes" in problems[1]


def test_unreadable_and_non_utf8_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the config file"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b'[cluster]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml:2: not UTF-8 text"):
        load_config(tmp_path / "latin1.toml")


# --- what a valid file becomes ------------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    text = BASE + '\n[coordination]\npath = "../shared/coord.db"\n'
    (conf_dir / "hakit.toml").write_text(text.replace('"home"', '"data/home"'))
    cfg = load_config(conf_dir / "hakit.toml")
    assert cfg.source == conf_dir / "hakit.toml"
    assert cfg.app.home == conf_dir / "data" / "home"
    assert cfg.cluster.state_dir == conf_dir / "hakit-state"
    assert cfg.coordination_path == tmp_path / "shared" / "coord.db"
    assert cfg.app.database_url == f"sqlite:///{conf_dir / 'app.db'}"


def test_the_sqlite_section_names_the_store(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "hakit.toml"
    path.write_text(BASE + '\n[coordination.sqlite]\npath = "../shared/coord.db"\n')
    cfg = load_config(path)
    assert cfg.coordination.backend == "sqlite"
    assert cfg.coordination_path == tmp_path / "shared" / "coord.db"
    path.write_text(BASE)  # no section: the default place
    assert (
        load_config(path).coordination_path == tmp_path / "etc" / "hakit-state" / "coordination.db"
    )


def test_the_etcd_section_names_endpoints_and_prefix(tmp_path: Path) -> None:
    from hakit.coord.etcd import EtcdCoordinator
    from hakit.coord.factory import open_coordinator

    path = tmp_path / "hakit.toml"
    path.write_text(
        changed("[cluster]\n", '[cluster]\nname = "shop"\n')
        + '\n[coordination]\nbackend = "etcd"\n\n[coordination.etcd]\n'
        'endpoints = ["http://10.0.0.1:2379", "https://etcd2:2379"]\nprefix = "/ha"\n'
        "timeout = 1.5\n"
    )
    cfg = load_config(path)
    section = cfg.coordination.section("etcd")
    assert section == cfg.coordination.etcd
    assert cfg.coordination.etcd.endpoints == ["http://10.0.0.1:2379", "https://etcd2:2379"]
    assert cfg.coordination.etcd.timeout == 1.5
    store = open_coordinator(cfg)  # no connection until the first call
    assert isinstance(store, EtcdCoordinator) and store.prefix == "/ha/shop/"
    store.close()


def test_an_unknown_backend_lists_every_registered_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from hakit.config import CoordinationConfig
    from hakit.coord import registry

    more = {**registry.BACKENDS, "etcd": registry.BACKENDS["sqlite"]}
    monkeypatch.setattr(registry, "BACKENDS", more)
    listed = ", ".join(f'"{name}"' for name in more)
    with pytest.raises(ValidationError, match=f'"zk" is not a backend; expected one of {listed}'):
        CoordinationConfig(backend="zk")
    assert CoordinationConfig(backend="etcd").backend == "etcd"


def test_each_registered_backend_has_its_section_in_the_config() -> None:
    from hakit.config import CoordinationConfig
    from hakit.coord.registry import BACKENDS

    for name, backend in BACKENDS.items():
        assert backend.name == name
        assert CoordinationConfig.model_fields[name].annotation is backend.section
        assert isinstance(CoordinationConfig().section(name), backend.section)


def test_valid_values_are_typed(tmp_path: Path) -> None:
    text = changed('home = "home"', 'home = "home"\nstop = "kill -TERM $PID"')
    (tmp_path / "hakit.toml").write_text(text + '\n[health]\ninterval = "500ms"\ntimeout = "2m"\n')
    cfg = load_config(tmp_path / "hakit.toml")
    assert isinstance(cfg, Config)
    assert cfg.app.start == ("python3", "-m", "hakit.demo", "--port", "{port}")
    assert cfg.app.stop == "kill -TERM $PID"
    assert (cfg.health.interval, cfg.health.timeout) == (0.5, 120.0)
    assert cfg.app.health == HealthCheckConfig(status_url="http://{host}:{port}/status")
    assert [n.route_name for n in cfg.nodes] == ["node1", "node2"]


def test_describe_gives_detection_times(tmp_path: Path) -> None:
    text = BASE + '\n[health]\ninterval = "2s"\ntimeout = "5s"\nfall = 4\n'
    (tmp_path / "hakit.toml").write_text(text)
    summary = "\n".join(describe_config(load_config(tmp_path / "hakit.toml")))
    assert "a crash at once" in summary
    assert "a hang after 8s = max(timeout 5s, fall 4 x interval 2s)" in summary
    assert "ttl 3s, renewed every 1s" in summary
    assert "node2: 127.0.0.1:8102, route node2" in summary


def test_on_failed_start_and_failback_in_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(BASE + "\n[failover]\nauto_failback = false\n")
    cfg = load_config(path)
    assert cfg.failover.on_failed_start is OnFailedStart.ALERT  # the default
    summary = "\n".join(describe_config(cfg))
    assert "a start that keeps failing: alert, no failover (on_failed_start)" in summary
    assert "no automatic failback (a failed node stays standby: hakit switchover" in summary
    assert "automatic failback on" not in summary
    path.write_text(BASE + '\n[failover]\non_failed_start = "failover"\n')
    cfg = load_config(path)
    assert cfg.failover.on_failed_start is OnFailedStart.FAILOVER
    summary = "\n".join(describe_config(cfg))
    assert "a start that keeps failing: fail over (once; on_failed_start)" in summary


# --- the line locator ------------------------------------------------------------------

LOCATOR_SOURCE = '''\
# comment with [fake] header and key = 1
title = "a # not a comment [x]"  # trailing comment
owner.name = "dotted"

[app]
start = [
  "python3",   # comment inside an array
  "-m", "x",
]
env = { A = "1", "B.C" = "2" }
notes = """
[not_a_table]
fake = 1
"""
'quoted key' = 'literal'

[app.health]
url = "http://x/"

[[nodes]]
name = "n0"

[[nodes]]
name = "n1"

[nodes.extra]
k = 1

[[nodes.checks]]
c = 1

[[nodes]]
name = "n2"
'''


def test_key_lines_maps_every_kind_of_key() -> None:
    assert tomllib.loads(LOCATOR_SOURCE)["nodes"][1]["checks"] == [{"c": 1}]  # valid TOML
    lines = key_lines(LOCATOR_SOURCE)
    assert lines[("title",)] == 2
    assert lines[("owner",)] == lines[("owner", "name")] == 3
    assert lines[("app",)] == 5
    assert lines[("app", "start")] == 6
    assert lines[("app", "start", 1)] == 8
    assert lines[("app", "env")] == lines[("app", "env", "B.C")] == 10
    assert lines[("app", "notes")] == 11
    assert ("not_a_table",) not in lines and ("app", "fake") not in lines
    assert lines[("app", "quoted key")] == 15
    assert lines[("app", "health", "url")] == 18
    assert lines[("nodes",)] == lines[("nodes", 0)] == 20
    assert lines[("nodes", 0, "name")] == 21
    assert lines[("nodes", 1, "name")] == 24
    assert lines[("nodes", 1, "extra", "k")] == 27
    assert lines[("nodes", 1, "checks", 0, "c")] == 30
    assert lines[("nodes", 2)] == 32


def test_locate_falls_back_to_the_nearest_existing_table() -> None:
    lines = key_lines(LOCATOR_SOURCE)
    assert locate(lines, ("app", "env", "A")) == 10
    assert locate(lines, ("app", "home")) == 5  # missing key: its table header
    assert locate(lines, ("nodes", 2, "port")) == 32
    assert locate(lines, ("health", "fall")) == 1  # nothing known: top of file
    assert locate(lines, ()) == 1


def test_key_lines_never_hangs_on_unbalanced_input() -> None:
    for broken in ("a = [1, 2", 'a = "open', "[[x", "a = { b = ", "= = =", "'''"):
        key_lines(broken)  # returns, whatever it finds


def test_syntax_error_position_splits_line_from_message() -> None:
    assert syntax_error_position("Invalid value (at line 3, column 8)", "") == (
        3,
        "Invalid value at column 8",
    )
    assert syntax_error_position("Unclosed array (at end of document)", "a\nb\nc") == (
        3,
        "Unclosed array at the end of the file",
    )
    assert syntax_error_position("odd", "") == (1, "odd")


# --- value parsers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("2m", 120.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        (" 3 s ", 3.0),
        ("7", 7.0),
        (4, 4.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("15 sec", '"15 sec" is not a duration; expected'),
        ("-1s", '"-1s" is not a duration'),
        (-2, "-2 is negative"),
        (True, "got a boolean"),
        (float("inf"), "inf is not a finite duration"),
        ([1], "got an array"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_duration(value)


def test_format_duration_is_the_inverse_for_round_values() -> None:
    for text in ("500ms", "1s", "90s", "2m", "10m", "1h", "1.5s"):
        assert format_duration(parse_duration(text)) == text


def test_parse_listen_and_same_machine() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("8080", ":8080", "::1:80", "host:http", "host:70000"):
        with pytest.raises(ValueError, match="expected host:port"):
            parse_listen(bad)
    assert same_machine_address("0.0.0.0", "127.0.0.1")
    assert same_machine_address("localhost", "127.0.0.1")
    assert not same_machine_address("0.0.0.0", "10.0.0.12")  # may well be another machine
    assert not same_machine_address("10.0.0.11", "10.0.0.12")
