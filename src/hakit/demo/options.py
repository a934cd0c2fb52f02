"""Command line and environment of the sample app.

Every option can also come from an ``HAKIT_DEMO_<NAME>`` environment variable so
a supervisor can configure the app without building an argv; the command line
wins when both are given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hakit.contract import EPOCH_VARIABLE

ENV_PREFIX = "HAKIT_DEMO_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class DemoOptions:
    port: int  # 0: let the kernel pick one (the log says which)
    home: Path
    database_url: str
    host: str = "127.0.0.1"
    route: str = ""  # Tomcat jvmRoute: suffix of JSESSIONID and the X-Hakit-Node value
    startup_delay: float = 0.0  # seconds spent in STARTING with the port already open
    enable_faults: bool = False  # /faults/* answer 404 unless set
    drain_seconds: float = 10.0  # longest wait for in-flight requests after SIGTERM
    fail_start: bool = False  # exit 1 at the end of startup, like a bad configuration
    # Fail the start only while this file exists: a node-local fault (a broken local
    # config, a full local disk) that a per-node path such as ".../fail-{node}" targets.
    fail_start_if: Path | None = None
    # Like Tomcat whose webapp failed to deploy: the server is up, but every URL,
    # /status included, answers 404 with an HTML page (no JSON).
    not_deployed: bool = False
    # Orphan attachments (a file with no row) older than this are removed at startup.
    # At startup this app writes nothing yet, but on shared storage the old active
    # may still be between a file and its row: it is stopped within a lease TTL
    # plus its stop timeout (seconds to a minute or two), and its mtimes come from
    # another clock. Ten minutes is far beyond both, and crash litter is no hurry.
    orphan_grace_seconds: float = 600.0
    # The lease epoch the agent started this app under (HAKIT_EPOCH; 0: unknown, or
    # started without the lease). Logged beside every write: see demo.integrity.
    epoch: int = 0


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(ENV_PREFIX + name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    print(
        f"hakit-demo: {ENV_PREFIX}{name}={value!r} is not a yes/no value; use 1 or 0",
        file=sys.stderr,
    )
    raise SystemExit(2)  # a usage error, as argparse reports them


def _env_epoch(env: Mapping[str, str]) -> int:
    value = env.get(EPOCH_VARIABLE, "").strip()
    if value.isdigit():
        return int(value)
    if value:
        print(
            f"hakit-demo: {EPOCH_VARIABLE}={value!r} is not an epoch (0 or more)", file=sys.stderr
        )
        raise SystemExit(2)
    return 0


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def default(name: str) -> str | None:
        return env.get(ENV_PREFIX + name)

    parser = argparse.ArgumentParser(
        prog="python -m hakit.demo",
        description="hakit's sample app: a small stand-in for Jira/Bitbucket.",
        epilog=f"Every option can also be set as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}PORT).",
    )
    # Required unless the environment provides them. argparse converts string
    # defaults with ``type``, so a bad environment value is a usage error too.
    parser.add_argument("--port", type=int, default=default("PORT"), required=not default("PORT"))
    parser.add_argument("--home", type=Path, default=default("HOME"), required=not default("HOME"))
    parser.add_argument(
        "--database-url",
        default=default("DATABASE_URL"),
        required=not default("DATABASE_URL"),
        help="sqlite:///relative.db, sqlite:////absolute.db or postgresql://...",
    )
    parser.add_argument("--host", default=default("HOST") or "127.0.0.1")
    parser.add_argument("--route", default=default("ROUTE") or "")
    parser.add_argument("--startup-delay", type=float, default=default("STARTUP_DELAY") or "0")
    parser.add_argument("--drain-seconds", type=float, default=default("DRAIN_SECONDS") or "10")
    parser.add_argument(
        "--orphan-grace-seconds",
        type=float,
        default=default("ORPHAN_GRACE_SECONDS") or "600",
        metavar="SECONDS",
        help="at startup, remove attachment files with no row older than this (default 600)",
    )
    parser.add_argument(
        "--enable-faults", action="store_true", default=_env_flag(env, "ENABLE_FAULTS")
    )
    parser.add_argument("--fail-start", action="store_true", default=_env_flag(env, "FAIL_START"))
    parser.add_argument(
        "--fail-start-if",
        type=Path,
        default=default("FAIL_START_IF") or None,
        metavar="FILE",
        help="fail the start (exit 1) only while FILE exists",
    )
    parser.add_argument(
        "--not-deployed",
        action="store_true",
        default=_env_flag(env, "NOT_DEPLOYED"),
        help="answer every URL, /status included, with a 404 page: the webapp failed to deploy",
    )
    return parser


def parse_options(argv: Sequence[str], env: Mapping[str, str]) -> DemoOptions:
    """Options from ``argv`` over ``env``; exits 2 with a usage message when invalid."""
    parser = _parser(env)
    args = parser.parse_args(list(argv))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port (0-65535)")
    durations = (args.startup_delay, args.drain_seconds, args.orphan_grace_seconds)
    if not all(seconds >= 0 for seconds in durations):  # written so that NaN fails too
        parser.error(
            "--startup-delay, --drain-seconds and --orphan-grace-seconds must be 0 or more"
        )
    return DemoOptions(
        port=int(args.port),
        home=Path(args.home),
        database_url=str(args.database_url),
        host=args.host,
        route=args.route,
        startup_delay=args.startup_delay,
        enable_faults=args.enable_faults,
        drain_seconds=args.drain_seconds,
        fail_start=args.fail_start,
        fail_start_if=args.fail_start_if,
        not_deployed=args.not_deployed,
        orphan_grace_seconds=args.orphan_grace_seconds,
        epoch=_env_epoch(env),
    )
