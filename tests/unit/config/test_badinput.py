"""Bad input found by the chaos run: each refused with file, line, key and what is expected.

Placeholder typos in app commands and env, absurd durations, quoted numbers, short
tokens, nesting that exhausts the TOML parser's stack; and the warnings of
``hakit config check`` (admin endpoints on every interface, the token file).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hakit.config import MAX_DURATION, PLACEHOLDERS, AppConfig, load_config, parse_duration
from hakit.config.check import config_warnings
from hakit.config.toml_positions import MAX_NESTING, key_lines, too_deep
from tests.unit.config.test_config import BASE, changed, problems_of

START = 'start = ["python3", "-m", "hakit.demo", "--port", "{port}"]'
NAMES = "{node}, {host}, {port}, {route}, {home} and {database_url}"
LITERAL = "write {{ and }} for a literal brace"


# --- {placeholders} in app.start, app.stop and app.env ----------------------------------------

PLACEHOLDER_MISTAKES = [
    pytest.param(
        changed(START, START.replace("{port}", "--port={prot}")),
        [
            'FILE:5: app.start: item 4: "--port={prot}" uses {prot}; did you mean {port}? '
            f"expected only {NAMES} ({LITERAL})"
        ],
        id="typo-in-argv",
    ),
    pytest.param(
        changed(START, 'start = "exec ./bin/start --port {port} --home ${HOME}"'),
        [
            'FILE:5: app.start: "exec ./bin/start --port {port} --home ${HOME}" uses {HOME}; '
            f"did you mean {{home}}? expected only {NAMES} ({LITERAL})"
        ],
        id="shell-variable-in-a-shell-string",
    ),
    pytest.param(
        changed(START, START.replace("{port}", "{port")),
        [f"FILE:5: app.start: item 4: \"{{port\": expected '}}' before end of string; {LITERAL}"],
        id="unclosed-brace",
    ),
    pytest.param(
        changed('home = "home"', 'home = "home"\nstop = "kill -TERM $(cat pid})"'),
        [
            "FILE:7: app.stop: \"kill -TERM $(cat pid})\": Single '}' encountered in format "
            f"string; {LITERAL}"
        ],
        id="lone-closing-brace-in-stop",
    ),
    pytest.param(
        changed(START, START.replace("{port}", "{port:05}")),
        [
            'FILE:5: app.start: item 4: "{port:05}" gives {port} a conversion or format spec; '
            f"expected plain {{port}} ({LITERAL})"
        ],
        id="format-spec",
    ),
    pytest.param(
        changed(
            'home = "home"',
            'home = "home"\n\n[app.env]\nJAVA_HOME = "/opt/java"\nDATA = "{hoem}/data"',
        ),
        [
            'FILE:10: app.env.DATA: "{hoem}/data" uses {hoem}; did you mean {home}? '
            f"expected only {NAMES} ({LITERAL})"
        ],
        id="typo-in-env",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PLACEHOLDER_MISTAKES)
def test_placeholder_mistakes_are_refused_with_the_allowed_names(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    assert problems_of(tmp_path, text) == expected


def test_every_placeholder_and_literal_braces_are_accepted(tmp_path: Path) -> None:
    every = " ".join(f"--{name}={{{name}}}" for name in PLACEHOLDERS)
    text = changed(START, f'start = "./bin/start {every} --json={{{{}}}}"')
    text = text.replace(
        'home = "home"', 'home = "home"\nstop = ["./bin/stop", "{node}"]\nenv = { A = "{route}" }'
    )
    path = tmp_path / "hakit.toml"
    path.write_text(text)
    app = load_config(path).app
    assert app.start == f"./bin/start {every} --json={{{{}}}}"
    values = {name: f"<{name}>" for name in PLACEHOLDERS}
    # What the agent does with them (str.format_map) now succeeds for every value.
    assert isinstance(app.start, str) and "--json={}" in app.start.format_map(values)
    assert [part.format_map(values) for part in app.stop or ()] == ["./bin/stop", "<node>"]
    assert app.env["A"].format_map(values) == "<route>"


def test_the_agent_fills_in_exactly_the_names_the_config_allows(tmp_path: Path) -> None:
    from hakit.supervisor.launch import substitutions

    path = tmp_path / "hakit.toml"
    path.write_text(BASE)
    cfg = load_config(path)
    assert sorted(substitutions(cfg, cfg.nodes[0])) == sorted(PLACEHOLDERS)


def test_placeholders_are_checked_in_python_built_configs_too() -> None:
    with pytest.raises(ValueError, match=r"uses \{nodename\}; did you mean \{node\}\?"):
        AppConfig(start=("run", "{nodename}"), home=Path("h"), database_url="sqlite:///a.db")


# --- durations ------------------------------------------------------------------------------

WEEK = 'expected at most "168h"'
DURATION = 'expected a number of seconds or a string such as "15s", "2m" or "500ms"'


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("1e300", f"1e+300 is longer than 168h (a week), the longest duration hakit takes; {WEEK}"),
        ("inf", f"inf is not a finite duration; {DURATION}"),
        ("nan", f"nan is not a finite duration; {DURATION}"),
        ("-3", "-3 is negative; expected a duration of 0 or more"),
        (
            '"169h"',
            f'"169h" is longer than 168h (a week), the longest duration hakit takes; {WEEK}',
        ),
        (
            "9" * 30,
            f"999999999999999999999999999999 is longer than 168h (a week), the longest "
            f"duration hakit takes; {WEEK}",
        ),
        (
            '"' + "9" * 400 + 'h"',
            '"999999999999999999999999999999999999... is longer than 168h (a week), the '
            f"longest duration hakit takes; {WEEK}",
        ),
    ],
)
def test_absurd_durations_are_refused_with_the_bound(
    tmp_path: Path, written: str, message: str
) -> None:
    text = BASE + f"\n[coordination]\nlease_ttl = {written}\n"
    assert problems_of(tmp_path, text) == [f"FILE:18: coordination.lease_ttl: {message}"]


def test_the_longest_duration_is_accepted() -> None:
    assert parse_duration("168h") == parse_duration(604800) == MAX_DURATION
    with pytest.raises(ValueError, match="longer than 168h"):
        parse_duration(MAX_DURATION + 0.001)


def test_a_huge_recovery_target_is_refused_not_derived_from(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, BASE + "\n[failover]\nrecovery_target = 1e300\n")
    assert problems == [
        "FILE:18: failover.recovery_target: 1e+300 is longer than 168h (a week), the longest "
        f"duration hakit takes; {WEEK}"
    ]


# --- integers and booleans as TOML writes them ------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "port = 8102",
            'port = "8102"',
            'FILE:15: nodes[1].port: got the string "8102"; expected an integer (write 8102 '
            "without quotes)",
        ),
        (
            "port = 8102",
            "port = 8102.0",
            "FILE:15: nodes[1].port: got the float 8102.0; expected an integer",
        ),
        (
            "port = 8102",
            "port = true",
            "FILE:15: nodes[1].port: got the boolean true; expected an integer",
        ),
        (
            "port = 8102",
            'port = 8102\nadmin_port = "9102"',
            'FILE:16: nodes[1].admin_port: got the string "9102"; expected an integer (write '
            "9102 without quotes)",
        ),
        (
            "port = 8102",
            'port = 8102\nnofailover = "false"',
            'FILE:16: nodes[1].nofailover: got the string "false"; expected true or false',
        ),
        (
            "port = 8102",
            "port = 8102\nnofailover = 0",
            "FILE:16: nodes[1].nofailover: got the integer 0; expected true or false",
        ),
    ],
)
def test_numbers_and_booleans_are_not_coerced(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert problems_of(tmp_path, changed(old, new)) == [expected]


def test_optional_and_section_level_integers_are_strict_too(tmp_path: Path) -> None:
    text = BASE + '\n[health]\nfall = "3"\n\n[app.health]\nurl = "http://{host}:{port}/"\n'
    text += 'expect_status = "200"\n'
    assert problems_of(tmp_path, text) == [
        'FILE:18: health.fall: got the string "3"; expected an integer (write 3 without quotes)',
        'FILE:22: app.health.expect_status: got the string "200"; expected an integer '
        "(write 200 without quotes)",
    ]


# --- the admin token --------------------------------------------------------------------------


def test_a_short_token_says_how_long_without_showing_it(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, BASE + '\n[admin]\ntoken = "hunter2"\n')
    assert problems == [
        "FILE:18: admin.token: has only 7 characters; expected at least 16 characters: a long "
        "random secret, such as the output of `openssl rand -hex 32`"
    ]
    assert "hunter2" not in problems[0]


# --- nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["[" * 10_000 + "]" * 10_000, "{ a = " * 10_000 + "1" + " }" * 10_000],
    ids=["arrays", "inline-tables"],
)
def test_nesting_that_exhausts_the_parser_is_a_clean_error(tmp_path: Path, value: str) -> None:
    text = BASE.replace("[app]\n", f"[app]\nnotes = {value}\n")
    assert problems_of(tmp_path, text) == [
        f"FILE:5: app.notes: arrays or inline tables nested more than {MAX_NESTING} levels "
        "deep; expected a plain value (a hakit.toml nests 2 or 3 at most)"
    ]


def test_the_line_locator_skips_deep_nesting_without_recursing() -> None:
    deep = "[" * 10_000 + '"]]"' + "]" * 10_000
    source = f'a = 1\nb = {deep}\n\n[t]\nc = "after"\n'
    assert too_deep(source) == (2, ("b",))
    assert key_lines(source)[("t", "c")] == 5  # what follows is still found
    assert too_deep("a = [[1, [2]], { b = [3] }]\n") is None


def test_config_check_prints_the_nesting_problem_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(f"a = {'[' * 10_000}{']' * 10_000}\n")
    result = subprocess.run(
        [sys.executable, "-m", "hakit", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    assert f"{path}:1: a: arrays or inline tables nested more than" in result.stderr


# --- warnings of hakit config check -----------------------------------------------------------------

NODE1 = 'name = "node1"\nport = 8101'


UNFENCED = "failover: no fence_command with shared storage"


def warnings_of(tmp_path: Path, text: str) -> list[str]:
    """The warnings beside the one about fencing (BASE has shared storage and no
    fence_command: tested on its own below)."""
    path = tmp_path / "hakit.toml"
    path.write_text(text)
    found = [w.replace(str(path), "FILE") for w in config_warnings(load_config(path))]
    return [w for w in found if UNFENCED not in w]


def test_shared_storage_without_a_fence_command_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(BASE)
    (warning,) = [w for w in config_warnings(load_config(path)) if UNFENCED in w]
    assert "a standby never promotes over an old app that still answers" in warning
    assert "as Pacemaker requires STONITH" in warning
    path.write_text(BASE + '\n[failover]\nfence_command = ["/usr/local/bin/fence", "{node}"]\n')
    assert not [w for w in config_warnings(load_config(path)) if UNFENCED in w]


def test_a_config_with_local_admin_endpoints_has_no_warnings(tmp_path: Path) -> None:
    text = changed(NODE1, NODE1 + "\nadmin_port = 9101")
    text += '\n[router]\nadmin_listen = "127.0.0.1:9100"\n\n[admin]\ntoken = "0123456789abcdef"\n'
    assert warnings_of(tmp_path, text) == []


@pytest.mark.parametrize("listen", ["0.0.0.0:9100", "[::]:9100"])
def test_admin_listen_on_every_interface_is_a_warning(tmp_path: Path, listen: str) -> None:
    text = BASE + f'\n[router]\nadmin_listen = "{listen}"\n'
    assert warnings_of(tmp_path, text) == [
        f"FILE:18: router.admin_listen: {listen} is every interface of this machine: /metrics "
        "and /nodes (no authentication) answer anyone who can reach it; expected a loopback "
        'or internal address such as "127.0.0.1:9100", or a firewall'
    ]


def test_an_admin_api_on_every_interface_is_a_warning(tmp_path: Path) -> None:
    text = changed(NODE1, NODE1 + '\nhost = "0.0.0.0"\nadmin_port = 9101')
    text += '\n[admin]\ntoken = "0123456789abcdef"\n'
    assert warnings_of(tmp_path, text) == [
        "FILE:12: nodes[0].host: 0.0.0.0 is every interface: node1's admin API (admin_port "
        "9101) listens on all of them; expected the node's own address, where the router "
        "and the CLI reach it"
    ]
    # Without an admin API there is nothing to warn about.
    assert warnings_of(tmp_path, changed(NODE1, NODE1 + '\nhost = "0.0.0.0"')) == []


def test_token_file_problems_are_warnings_naming_the_file(tmp_path: Path) -> None:
    text = BASE + '\n[admin]\ntoken_file = "secret/token"\n'
    token = tmp_path / "secret" / "token"
    # Missing: the config still loads (a router-only machine needs no token).
    assert warnings_of(tmp_path, text) == [
        f"FILE:18: admin.token_file: {token}: cannot read it (No such file or directory); "
        "without it an agent cannot serve the admin API and the CLI cannot use it on this "
        "machine; expected a file whose first line is the token wherever an agent or the "
        "CLI runs"
    ]
    token.parent.mkdir()
    token.write_text("0123456789abcdef0123\n")
    token.chmod(0o600)
    assert warnings_of(tmp_path, text) == []
    for mode, who in ((0o640, "its group"), (0o604, "every user"), (0o620, "its group")):
        token.chmod(mode)
        assert warnings_of(tmp_path, text) == [
            f"FILE:18: admin.token_file: {token} is open to {who} (mode {mode:04o}): whoever "
            "reads the token can switch the cluster over; expected it private to its owner "
            f"(chmod 600 {token})"
        ]
    token.chmod(0o600)
    token.write_text("short\nthe second line is not the token\n")
    assert warnings_of(tmp_path, text) == [
        f"FILE:18: admin.token_file: {token}: the token on its first line has only 5 "
        "characters; expected at least 16: a long random secret, such as the output of "
        "`openssl rand -hex 32`"
    ]
