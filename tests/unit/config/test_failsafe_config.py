"""``[coordination] failsafe``: off by default; on, every node serves the admin API with a
token, and ``hakit config check`` says where it does not (file, line, key)."""

from __future__ import annotations

from pathlib import Path

from hakit.config import load_config
from tests.unit.config.test_config import BASE, changed, problems_of

TOKEN = '\n[admin]\ntoken = "0123456789abcdef0123"\n'


def with_failsafe(text: str) -> str:
    return text.replace("[app]", "[coordination]\nfailsafe = true\n\n[app]", 1)


def test_failsafe_is_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(BASE)
    assert load_config(path).coordination.failsafe is False


def test_failsafe_needs_a_token_and_every_admin_port(tmp_path: Path) -> None:
    text = with_failsafe(changed("port = 8101\n", "port = 8101\nadmin_port = 9101\n"))
    assert problems_of(tmp_path, text) == [
        "FILE:5: coordination.failsafe: failsafe mode asks every other node's agent over the "
        'admin API, but [admin] has no token; expected [admin] token = "<a long random '
        'secret>" or token_file = "PATH", or failsafe = false',
        "FILE:15: nodes[0].admin_port: node1 serves the admin API, but [admin] has no token; "
        'expected [admin] token = "<a long random secret>" or token_file = "PATH"',
        "FILE:17: nodes[1]: node2 has no admin_port, but [coordination] failsafe = true needs "
        "every node's agent to answer the active over the admin API; expected admin_port = "
        "PORT on every node, or failsafe = false",
    ]


def test_failsafe_with_a_token_and_every_admin_port_loads(tmp_path: Path) -> None:
    text = with_failsafe(
        BASE.replace("port = 8101\n", "port = 8101\nadmin_port = 9101\n").replace(
            "port = 8102\n", "port = 8102\nadmin_port = 9102\n"
        )
        + TOKEN
    )
    path = tmp_path / "hakit.toml"
    path.write_text(text)
    assert load_config(path).coordination.failsafe is True
