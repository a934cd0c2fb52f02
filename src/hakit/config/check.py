"""Checking a hakit.toml as a whole: checks across sections, warnings, a summary.

The sections (hakit.config.schema) check themselves; what no single section can
see (node count for the mode, unique names / routes / addresses, the router's
address, fencing) is here, as pure functions of validated sections. The loader
(hakit.config.loader) runs them on every file; ``config_warnings`` (valid but
risky) and ``describe_config`` serve ``hakit config check``. Nothing here reads
the config file or imports the loader.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence

from hakit.config.derived import derived_lines
from hakit.config.problems import Problem, format_key, render
from hakit.config.schema import MIN_TOKEN_LENGTH, AdminConfig, Config, CoordinationConfig
from hakit.config.sections.app import AppConfig, FailoverConfig, OnFailedStart
from hakit.config.sections.cluster import NodeConfig
from hakit.config.sections.router import RouterConfig, TcpProxyConfig
from hakit.config.sections.snapshot import SnapshotConfig
from hakit.config.values import (
    STANDBY_MODES,
    STICKY_COOKIES,
    Mode,
    Storage,
    format_duration,
    mask_password,
    parse_listen,
)
from hakit.config.worstcase import timing_lines
from hakit.dbfence import fences_sessions
from hakit.snapshot.database import DUMP

# --- checks across sections (pure) -------------------------------------------


_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*", ""})
_LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


def same_machine_address(a: str, b: str) -> bool:
    """Whether two listen hosts certainly share a port space.

    Equal hosts do; a wildcard (0.0.0.0) and a loopback address do (both are
    this machine). A wildcard and another IP may be different machines: hakit
    cannot tell, so it does not complain.
    """

    def loopback(host: str) -> bool:
        return host in _LOOPBACK_HOSTS or host.startswith("127.")

    if a == b or (loopback(a) and loopback(b) and "localhost" in (a, b)):
        return True
    return (a in _WILDCARD_HOSTS and loopback(b)) or (b in _WILDCARD_HOSTS and loopback(a))


def cross_section_problems(
    mode: Mode | None,
    mode_is_default: bool,
    router: RouterConfig | None,
    node_count: int,
    nodes: Sequence[tuple[int, NodeConfig]],
) -> list[Problem]:
    """Mistakes no single section can see. ``nodes`` holds the valid nodes with their index."""
    problems: list[Problem] = []
    if mode is not None and node_count > 0:
        problems += _mode_problems(mode, mode_is_default, node_count)
    problems += _unique_node_problems(nodes)
    if router is not None:
        host, port = router.listen_address
        for index, node in nodes:
            if node.port == port and same_machine_address(node.host, host):
                problems.append(
                    Problem(
                        ("router", "listen"),
                        f"{router.listen} is also the address of node {node.name} "
                        f"(nodes[{index}]); expected a host:port no node uses",
                    )
                )
    return problems


def fence_problems(failover: FailoverConfig | None, app: AppConfig | None) -> list[Problem]:
    """Database session fencing needs a server database (hakit.dbfence)."""
    if failover is None or app is None or not failover.fence_database_sessions:
        return []
    if fences_sessions(app.database_url):
        return []
    return [
        Problem(
            ("failover", "fence_database_sessions"),
            "only applies to a PostgreSQL or MySQL/MariaDB database, but app.database_url is "
            f"{mask_password(app.database_url) or 'not set'}; expected false, or a "
            "postgresql:// or mysql:// database_url",
        )
    ]


def capture_method_problems(
    snapshot: SnapshotConfig | None, app: AppConfig | None
) -> list[Problem]:
    """A physical base backup is PostgreSQL's (hakit.snapshot.basebackup)."""
    if snapshot is None or app is None or snapshot.postgres_method == DUMP:
        return []
    if app.database_url.partition(":")[0] in ("postgresql", "postgres"):
        return []
    return [
        Problem(
            ("snapshot", "postgres_method"),
            f'"{snapshot.postgres_method}" captures a PostgreSQL server, but app.database_url is '
            f'{mask_password(app.database_url) or "not set"}; expected "dump" (the default), '
            "or a postgresql:// database_url",
        )
    ]


def unfenced_problems(cfg: Config) -> list[Problem]:
    """Shared storage, several nodes, no fence command: self-fencing is all there is."""
    if cfg.cluster.storage is not Storage.SHARED or cfg.failover.fence_command is not None:
        return []
    if len(cfg.nodes) < 2 or cfg.cluster.mode is Mode.RESTART_ONLY:
        return []
    return [
        Problem(
            ("failover",),
            "no fence_command with shared storage: a node that is cut off or frozen can only "
            "fence itself (its app's shim stops the app at the lease deadline), and a standby "
            "never promotes over an old app that still answers, so such a node keeps the "
            "cluster down until it is stopped by hand. Expected fence_command = [...] (IPMI, a "
            "cloud API's power-off) for unattended failover, as Pacemaker requires STONITH",
        )
    ]


def operator_problems(
    admin: AdminConfig | None, nodes: Sequence[tuple[int, NodeConfig]]
) -> list[Problem]:
    """An admin API needs a token; some node must be allowed to become active."""
    problems: list[Problem] = []
    if admin is not None and admin.token is None and admin.token_file is None:
        for index, node in nodes:
            if node.admin_port is not None:
                problems.append(
                    Problem(
                        ("nodes", index, "admin_port"),
                        f"{node.name} serves the admin API, but [admin] has no token; expected "
                        '[admin] token = "<a long random secret>" or token_file = "PATH"',
                    )
                )
                break
    if nodes and all(node.no_failover for _, node in nodes):
        index, node = nodes[0]
        problems.append(
            Problem(
                ("nodes", index, "nofailover"),
                "every node is nofailover, so none may ever become active; expected at least "
                "one node without nofailover",
            )
        )
    return problems


def failsafe_problems(
    coordination: CoordinationConfig | None,
    admin: AdminConfig | None,
    nodes: Sequence[tuple[int, NodeConfig]],
) -> list[Problem]:
    """Failsafe mode asks every other node's agent over the admin API: every node serves
    it, with a token (hakit.policy.failsafe)."""
    if coordination is None or not coordination.failsafe:
        return []
    problems: list[Problem] = []
    if admin is not None and admin.token is None and admin.token_file is None:
        problems.append(
            Problem(
                ("coordination", "failsafe"),
                "failsafe mode asks every other node's agent over the admin API, but [admin] "
                'has no token; expected [admin] token = "<a long random secret>" or '
                'token_file = "PATH", or failsafe = false',
            )
        )
    for index, node in nodes:
        if node.admin_port is None:
            problems.append(
                Problem(
                    ("nodes", index),
                    f"{node.name} has no admin_port, but [coordination] failsafe = true needs "
                    "every node's agent to answer the active over the admin API; expected "
                    "admin_port = PORT on every node, or failsafe = false",
                )
            )
    return problems


def _mode_problems(mode: Mode, mode_is_default: bool, node_count: int) -> list[Problem]:
    shown = f"{mode} (the default mode)" if mode_is_default else str(mode)
    configured = f"{node_count} [[nodes]] table{'s are' if node_count > 1 else ' is'} configured"
    if mode is Mode.RESTART_ONLY and node_count != 1:
        return [
            Problem(
                ("cluster", "mode"),
                f"{shown} runs exactly one node, but {configured}; expected one [[nodes]] "
                'table, or mode = "cold-standby" for several nodes',
            )
        ]
    if mode in STANDBY_MODES and node_count < 2:
        return [
            Problem(
                ("cluster", "mode"),
                f"{shown} needs at least two nodes (an active one and a standby), but "
                f'{configured}; expected a second [[nodes]] table, or mode = "restart-only"',
            )
        ]
    return []


def _unique_node_problems(nodes: Sequence[tuple[int, NodeConfig]]) -> list[Problem]:
    problems: list[Problem] = []
    names: dict[str, int] = {}
    routes: dict[str, tuple[int, NodeConfig]] = {}
    for index, node in nodes:
        duplicate_name = node.name in names
        if duplicate_name:
            problems.append(
                Problem(
                    ("nodes", index, "name"),
                    f'"{node.name}" is already the name of nodes[{names[node.name]}]; '
                    "expected a unique name per node",
                )
            )
        names.setdefault(node.name, index)
        route = node.route_name
        # A route defaulted from a duplicate name is the same mistake: say it once.
        if route in routes and (node.route or not duplicate_name):
            first_index, first = routes[route]
            defaulted = "" if node.route else " (defaulted from the name)"
            problems.append(
                Problem(
                    ("nodes", index, "route"),
                    f'route "{route}"{defaulted} is already used by {first.name} '
                    f"(nodes[{first_index}]); expected a unique route per node "
                    "(sticky cookies name the node by it)",
                )
            )
        routes.setdefault(route, (index, node))
    return problems + _port_problems(nodes)


def _port_problems(nodes: Sequence[tuple[int, NodeConfig]]) -> list[Problem]:
    """Two listeners on one port of one machine: the second app could not start."""
    problems: list[Problem] = []
    taken: list[tuple[str, int, str]] = []  # host, port, "node1" or "node1's admin_port"
    for index, node in nodes:
        for key, port in (("port", node.port), ("admin_port", node.admin_port)):
            if port is None:
                continue
            owner = next(
                (
                    who
                    for host, used, who in taken
                    if used == port and same_machine_address(host, node.host)
                ),
                None,
            )
            if owner is not None:
                problems.append(
                    Problem(
                        ("nodes", index, key),
                        f"{port} is already used by {owner} on {node.host}; "
                        "expected a port nothing else uses on that host",
                    )
                )
            taken.append((node.host, port, node.name if key == "port" else f"{node.name}'s {key}"))
    return problems


def tcp_proxy_problems(
    router: RouterConfig | None,
    nodes: Sequence[tuple[int, NodeConfig]],
    proxies: Sequence[tuple[int, TcpProxyConfig]],
) -> list[Problem]:
    """[[tcp_proxy]]: unique names; a listen address nothing else here uses; no self-loop."""
    taken: list[tuple[str, int, str]] = []  # host, port, who listens there
    if router is not None:
        for key in ("listen", "admin_listen", "redirect_http"):
            address = getattr(router, key)
            if address is not None:
                taken.append((*parse_listen(address), f"router.{key}"))
    for index, node in nodes:
        taken.append((node.host, node.port, f"node {node.name} (nodes[{index}])"))
        if node.admin_port is not None:
            taken.append((node.host, node.admin_port, f"{node.name}'s admin_port"))
    problems: list[Problem] = []
    names: dict[str, int] = {}
    for index, proxy in proxies:
        if proxy.name in names:
            problems.append(
                Problem(
                    ("tcp_proxy", index, "name"),
                    f'"{proxy.name}" is already the name of tcp_proxy[{names[proxy.name]}]; '
                    "expected a unique name per [[tcp_proxy]] (logs and status name it)",
                )
            )
        names.setdefault(proxy.name, index)
        host, port = proxy.listen_address
        owner = next(
            (who for h, p, who in taken if p == port and same_machine_address(h, host)), None
        )
        if owner is not None:
            problems.append(
                Problem(
                    ("tcp_proxy", index, "listen"),
                    f"{proxy.listen} is also the address of {owner}; "
                    "expected a host:port nothing else listens on",
                )
            )
        if any(p == port and same_machine_address(h, host) for h, p in proxy.upstream_addresses):
            problems.append(
                Problem(
                    ("tcp_proxy", index, "upstreams"),
                    f"{proxy.listen} is the proxy's own listen address; expected the "
                    "upstreams' addresses (the proxy would connect to itself)",
                )
            )
        taken.append((host, port, f"tcp_proxy[{index}] ({proxy.name})"))
    return problems


# --- warnings: valid, but risky ----------------------------------------------------


def config_warnings(cfg: Config) -> list[str]:
    """What makes a valid config risky, as ``FILE:LINE: KEY: ...`` lines for ``hakit config
    check``: admin endpoints on every interface, and a token_file this machine cannot
    use or others can read.

    Warnings, not errors: the file is shared, and a machine that runs only the router
    needs no token file; the agents and the CLI do.
    """
    problems = exposure_problems(cfg.router, list(enumerate(cfg.nodes)))
    problems += token_file_problems(cfg.admin)
    problems += unfenced_problems(cfg)
    if cfg.source is None:
        return [f"{format_key(p.loc)}: {p.message}" for p in problems]
    try:
        source = cfg.source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        source = ""
    return render(cfg.source, source, problems)


def exposure_problems(
    router: RouterConfig, nodes: Sequence[tuple[int, NodeConfig]]
) -> list[Problem]:
    """Admin endpoints listening on every interface (0.0.0.0, ::)."""
    problems: list[Problem] = []
    if router.admin_listen is not None:
        host, port = parse_listen(router.admin_listen)
        if host in _WILDCARD_HOSTS:
            problems.append(
                Problem(
                    ("router", "admin_listen"),
                    f"{router.admin_listen} is every interface of this machine: /metrics and "
                    "/nodes (no authentication) answer anyone who can reach it; expected a "
                    f'loopback or internal address such as "127.0.0.1:{port}", or a firewall',
                )
            )
    for index, node in nodes:
        if node.admin_port is not None and node.host in _WILDCARD_HOSTS:
            problems.append(
                Problem(
                    ("nodes", index, "host"),
                    f"{node.host or '(empty)'} is every interface: {node.name}'s admin API "
                    f"(admin_port {node.admin_port}) listens on all of them; expected the "
                    "node's own address, where the router and the CLI reach it",
                )
            )
    return problems


def token_file_problems(admin: AdminConfig) -> list[Problem]:
    """admin.token_file as this machine sees it: readable, private, a long enough token."""
    path = admin.token_file
    if path is None:
        return []
    key = ("admin", "token_file")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        why = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        return [
            Problem(
                key,
                f"{path}: cannot read it ({why}); without it an agent cannot serve the admin "
                "API and the CLI cannot use it on this machine; expected a file whose first "
                "line is the token wherever an agent or the CLI runs",
            )
        ]
    problems: list[Problem] = []
    if mode & 0o077:
        who = "every user" if mode & 0o007 else "its group"
        problems.append(
            Problem(
                key,
                f"{path} is open to {who} (mode {mode:04o}): whoever reads the token can "
                f"switch the cluster over; expected it private to its owner (chmod 600 {path})",
            )
        )
    length = len(lines[0].strip()) if lines else 0
    if length < MIN_TOKEN_LENGTH:
        problems.append(
            Problem(
                key,
                f"{path}: the token on its first line has only {length} characters; expected "
                f"at least {MIN_TOKEN_LENGTH}: {AdminConfig.model_fields['token'].description}",
            )
        )
    return problems


# --- summary --------------------------------------------------------------------


def describe_config(cfg: Config) -> list[str]:
    """A short human summary of a valid config, for ``hakit config check``."""
    health = cfg.health
    fd = format_duration
    hang = max(health.timeout, health.fall * health.interval)
    lines = [
        f"cluster {cfg.cluster.name}: {cfg.cluster.mode}, {cfg.cluster.storage} storage, "
        f"state in {cfg.cluster.state_dir}",
        f"nodes ({len(cfg.nodes)}):",
        *(
            f"  {node.name}: {node.host}:{node.port}, route {node.route_name}"
            + (f", admin port {node.admin_port}" if node.admin_port else "")
            + (", nofailover (never active)" if node.no_failover else "")
            for node in cfg.nodes
        ),
        f"router: listens on {cfg.router.listen}, sticky {_sticky(cfg)}; {_hold(cfg)}",
        f"app: home {cfg.app.home}, database {mask_password(cfg.app.database_url)}",
        f"app start: up to {fd(cfg.app.startup_timeout)}; stop: up to {fd(cfg.app.stop_timeout)}"
        " before the process group is killed",
        f"health check: {_health_check(cfg)}, every {fd(health.interval)} "
        f"(probe timeout {fd(health.probe_timeout)})",
        "detection: a crash at once (process exit or refused connection); "
        f"a hang after {fd(hang)} = max(timeout {fd(health.timeout)}, "
        f"fall {health.fall} x interval {fd(health.interval)})",
        f"correction: {_correction(cfg)}",
        f"leader lease: {cfg.coordination.backend} at {cfg.coordination_path}, "
        f"ttl {fd(cfg.coordination.lease_ttl)}, renewed every "
        f"{fd(cfg.coordination.renew_interval)}; a lost node is noticed within "
        f"{fd(cfg.coordination.lease_ttl)}",
        f"store unreachable: {_failsafe(cfg)}",
        f"fencing: {_fencing(cfg)}",
        *filter(None, [cfg.snapshot.describe()]),
    ]
    return lines + _tcp_proxy_lines(cfg) + derived_lines(cfg) + timing_lines(cfg)


def _failsafe(cfg: Config) -> str:
    fd = format_duration
    ttl = cfg.coordination.lease_ttl
    if not cfg.coordination.failsafe:
        return "the active fences at its lease deadline; no node promotes (failsafe = false)"
    return (
        "failsafe mode: the active keeps serving while every other node's agent confirms, "
        f"over the admin API, that it is not promoting ({fd(ttl)} per round, each node "
        f"promising {fd(2 * ttl)}); otherwise it fences at its deadline"
    )


def _hold(cfg: Config) -> str:
    hold = cfg.router.hold_timeout
    if hold <= 0:
        return "no hold: requests get the maintenance page at once while no node serves"
    return (
        f"idempotent requests wait up to {format_duration(hold)} for a node "
        "(hold_timeout), then get the maintenance page"
    )


def _fencing(cfg: Config) -> str:
    failover = cfg.failover
    words = "an agent that cannot renew its lease kills its app before the lease ends"
    if failover.fence_command is not None:
        words += (
            f"; before promoting over an expired lease, `{' '.join(failover.fence_command)}` "
            f"against the old node (up to {format_duration(failover.fence_timeout)}; "
            "no promotion unless it succeeds)"
        )
    else:
        words += (
            " (the app's shim stops it at the lease deadline even if the agent is frozen or"
            " dead; no fence_command: a standby never promotes over an old app that still"
            " answers)"
        )
    if failover.fence_database_sessions:
        words += "; then the old node's database sessions are terminated"
    return words


def _tcp_proxy_lines(cfg: Config) -> list[str]:
    fd = format_duration
    return [
        f"tcp proxy {p.name}: {p.listen} -> {', '.join(p.upstreams)} in order; {p.check} check "
        f"every {fd(p.interval)} (fall {p.fall}, rise {p.rise}); failback {'on' if p.failback else 'off'}"
        for p in cfg.tcp_proxy
    ]


def _sticky(cfg: Config) -> str:
    router = cfg.router
    cookie = STICKY_COOKIES[router.sticky].format(
        cookie_name=router.cookie_name, app_cookie_name=router.app_cookie_name
    )
    return f"{router.sticky} ({cookie})" if cookie else str(router.sticky)


def _health_check(cfg: Config) -> str:
    check = cfg.app.health
    if check.status_url is not None:
        return f"the /status contract at {check.status_url}"
    if check.url is not None:
        expected = [f"HTTP {check.expect_status}"] if check.expect_status else []
        expected += [f"a body matching /{check.expect_body}/"] if check.expect_body else []
        return f"{check.url} expecting {' and '.join(expected) or 'a 2xx answer'}"
    command = " ".join(check.command or ())
    return f"the command `{command}` (exit 0 = RUNNING, else the state it prints)"


def _correction(cfg: Config) -> str:
    failover = cfg.failover
    restarts = f"restart on the same node (up to {failover.restart_attempts} failed restarts "
    restarts += f"within {format_duration(failover.failure_window)})"
    if cfg.cluster.mode is Mode.RESTART_ONLY:
        return f"{restarts}, no failover (restart-only)"
    if failover.on_failed_start is OnFailedStart.FAILOVER:
        failed_start = "a start that keeps failing: fail over (once; on_failed_start)"
    else:
        failed_start = "a start that keeps failing: alert, no failover (on_failed_start)"
    return (
        f"{restarts}, then fail over to a standby; {failed_start}; no automatic failback "
        "(a failed node stays standby: hakit switchover moves it back)"
    )
