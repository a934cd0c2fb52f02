"""Reading a hakit.toml: ``load_config``.

It reads the file, validates each section on its own (so one bad section hides
no other), runs the checks no single section can see (hakit.config.check: node
count for the mode, unique names / routes / addresses, the router's address),
resolves relative paths, and words every problem with file, line and key::

    hakit.toml:12: health.fall: must be at least 1, got 0
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from hakit.backup.filestore import read_filestore_config
from hakit.config.check import (
    capture_method_problems,
    cross_section_problems,
    failsafe_problems,
    fence_problems,
    operator_problems,
    tcp_proxy_problems,
)
from hakit.config.problems import Problem, Wording, format_key, render
from hakit.config.schema import AdminConfig, Config, CoordinationConfig
from hakit.config.sections.app import AppConfig
from hakit.config.sections.backup import BackupConfig
from hakit.config.sections.base import PATTERN_HINTS
from hakit.config.sections.cluster import ClusterConfig, NodeConfig
from hakit.config.sections.replication import ReplicationConfig, replication_problems
from hakit.config.sections.router import RouterConfig, TcpProxyConfig
from hakit.config.sections.snapshot import SnapshotConfig
from hakit.config.timing import apply_recovery_target
from hakit.config.toml_positions import MAX_NESTING, syntax_error_position, too_deep
from hakit.config.values import (
    sqlite_path,
)
from hakit.errors import ConfigError


def load_config(path: Path) -> Config:
    """Read, validate and resolve a hakit.toml; raise ConfigError listing every problem.

    Relative paths (cluster.state_dir, coordination.path and coordination.sqlite.path,
    app.home, a sqlite database file, backup.filestore_config, backup.directory and
    snapshot.directory) are resolved against the file's directory; ``source`` is set.
    Jira's filestore-config.xml is checked apart (``filestore_problems``).
    """
    path = Path(path)
    source = _read_source(path)
    try:
        raw = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        line, message = syntax_error_position(str(error), source)
        raise ConfigError(
            [f"{path}:{line}: TOML syntax error: {message}; expected valid TOML (https://toml.io)"]
        ) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError([_too_deep_problem(path, source)]) from None
    # Timers the file leaves out come from failover.recovery_target (hakit.config.timing);
    # before validation, so the section checks see the combination.
    raw, derived = apply_recovery_target(raw)
    values, problems = _validate_sections(raw)
    problems += _cross_problems(raw, values)
    if problems:
        raise ConfigError(render(path, source, problems))
    base = Path(os.path.abspath(path.parent))
    return Config(**_resolve_paths(values, base), source=base / path.name, derived=derived)


def filestore_problems(config: Config) -> list[str]:
    """Jira's filestore-config.xml (``[backup]``, hakit.backup.filestore): its mistakes, with
    its own lines. Not part of ``load_config``: the file lives in the app's home, edited by
    the app's admins, and a mistake in it must stop backups (and ``hakit config check``),
    never an agent's start, which a failover may depend on."""
    filestore = config.backup.filestore_path(config.app.home)
    parsed = read_filestore_config(filestore)
    return parsed.lines(filestore) if parsed is not None and parsed.problems else []


def _read_source(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            [
                f"{path}: cannot read the config file ({error.strerror}); expected a readable TOML file"
            ]
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            [f"{path}:{line}: not UTF-8 text; expected a UTF-8 encoded TOML file"]
        ) from None


def _too_deep_problem(path: Path, source: str) -> str:
    line, key = too_deep(source) or (1, ())
    return (
        f"{path}:{line}: {format_key(key)}: arrays or inline tables nested more than "
        f"{MAX_NESTING} levels deep; expected a plain value (a hakit.toml nests 2 or 3 at most)"
    )


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    annotation: Any = Config.model_fields[name].annotation
    return TypeAdapter(annotation)


@cache
def _wording() -> Wording:
    return Wording(Config, PATTERN_HINTS)


def _toml_fields() -> list[str]:
    return [name for name, field in Config.model_fields.items() if not field.exclude]


def _validate_sections(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """Validate each top-level section on its own, so one bad section hides no other."""
    values: dict[str, Any] = {}
    wording = _wording()
    problems = [wording.unknown_key((key,)) for key in raw if key not in _toml_fields()]
    for name in _toml_fields():
        field = Config.model_fields[name]
        if name not in raw:
            if field.is_required():
                problems.append(wording.missing((name,)))
            else:
                values[name] = field.get_default(call_default_factory=True)
            continue
        try:
            values[name] = _adapter(name).validate_python(raw[name])
        except ValidationError as error:
            problems += wording.problems(error, prefix=(name,))
    return values, problems


def _cross_problems(raw: Mapping[str, Any], values: Mapping[str, Any]) -> list[Problem]:
    cluster: ClusterConfig | None = values.get("cluster")
    raw_cluster = raw.get("cluster")
    raw_nodes = raw.get("nodes")
    node_list = raw_nodes if isinstance(raw_nodes, list) else []
    problems: list[Problem] = []
    if isinstance(raw_nodes, list) and not raw_nodes:
        problems.append(Problem(("nodes",), "no nodes; expected at least one [[nodes]] table"))
    raw_proxies = raw.get("tcp_proxy")
    proxies = _valid_tcp_proxies(raw_proxies if isinstance(raw_proxies, list) else [])
    return (
        problems
        + cross_section_problems(
            mode=cluster.mode if cluster is not None else None,
            mode_is_default=not (isinstance(raw_cluster, dict) and "mode" in raw_cluster),
            router=values.get("router"),
            node_count=len(node_list),
            nodes=_valid_nodes(node_list),
        )
        + tcp_proxy_problems(values.get("router"), _valid_nodes(node_list), proxies)
        + operator_problems(values.get("admin"), _valid_nodes(node_list))
        + failsafe_problems(
            values.get("coordination"), values.get("admin"), _valid_nodes(node_list)
        )
        + fence_problems(values.get("failover"), values.get("app"))
        + capture_method_problems(values.get("snapshot"), values.get("app"))
        + replication_problems(
            cluster,
            _has_token(values.get("admin")),
            _valid_nodes(node_list),
            app.database_url if isinstance(app := values.get("app"), AppConfig) else "",
        )
    )


def _has_token(admin: AdminConfig | None) -> bool:
    return admin is None or admin.token is not None or admin.token_file is not None


def _valid_tcp_proxies(raw_proxies: Sequence[Any]) -> list[tuple[int, TcpProxyConfig]]:
    """The [[tcp_proxy]] entries that validate on their own."""
    valid: list[tuple[int, TcpProxyConfig]] = []
    for index, item in enumerate(raw_proxies):
        try:
            valid.append((index, TcpProxyConfig.model_validate(item)))
        except ValidationError:
            continue
    return valid


def _valid_nodes(raw_nodes: Sequence[Any]) -> list[tuple[int, NodeConfig]]:
    """The nodes that validate on their own (the others are reported already)."""
    valid: list[tuple[int, NodeConfig]] = []
    for index, item in enumerate(raw_nodes):
        try:
            valid.append((index, NodeConfig.model_validate(item)))
        except ValidationError:
            continue
    return valid


def _resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths (and sqlite database files) are relative to the config file."""

    def resolved(path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else Path(os.path.normpath(base / path))

    cluster: ClusterConfig = values["cluster"]
    coordination: CoordinationConfig = values["coordination"]
    app: AppConfig = values["app"]
    admin: AdminConfig = values["admin"]
    backup: BackupConfig = values["backup"]
    snapshot: SnapshotConfig = values["snapshot"]

    def resolved_url(database_url: str) -> str:
        file_part = sqlite_path(database_url)
        if file_part is None:
            return database_url
        file, question, query = file_part.partition("?")
        return f"sqlite:///{resolved(Path(file))}{question}{query}"

    database_url = resolved_url(app.database_url)
    # Replicated storage: a node's own home and database (hakit.config.sections.replication).
    nodes = tuple(
        node.model_copy(
            update={
                "home": resolved(node.home) if node.home else None,
                "database_url": None
                if node.database_url is None
                else resolved_url(node.database_url),
            }
        )
        for node in values["nodes"]
    )
    replication: ReplicationConfig = values["replication"]
    return {
        **values,
        "cluster": cluster.model_copy(update={"state_dir": resolved(cluster.state_dir)}),
        "coordination": coordination.model_copy(
            update={
                "path": resolved(coordination.path) if coordination.path else None,
                "sqlite": coordination.sqlite.model_copy(
                    update={
                        "path": resolved(coordination.sqlite.path)
                        if coordination.sqlite.path
                        else None
                    }
                ),
            }
        ),
        "app": app.model_copy(update={"home": resolved(app.home), "database_url": database_url}),
        "nodes": nodes,
        "replication": replication.model_copy(
            update={"directory": resolved(replication.directory) if replication.directory else None}
        ),
        "router": _resolve_router_paths(values["router"], resolved),
        "admin": admin.model_copy(
            update={"token_file": resolved(admin.token_file) if admin.token_file else None}
        ),
        "backup": backup.model_copy(
            update={
                "filestore_config": resolved(backup.filestore_config)
                if backup.filestore_config
                else None,
                "directory": resolved(backup.directory) if backup.directory else None,
                "encryption_key_file": resolved(backup.encryption_key_file)
                if backup.encryption_key_file
                else None,
                "drill_scratch": resolved(backup.drill_scratch) if backup.drill_scratch else None,
            }
        ),
        "snapshot": snapshot.model_copy(
            update={"directory": resolved(snapshot.directory) if snapshot.directory else None}
        ),
    }


def _resolve_router_paths(router: RouterConfig, resolved: Callable[[Path], Path]) -> RouterConfig:
    """router.tls_cert, tls_key and access_log ("-": stderr) relative to the config file."""
    log = router.access_log
    return router.model_copy(
        update={
            "tls_cert": resolved(router.tls_cert) if router.tls_cert else None,
            "tls_key": resolved(router.tls_key) if router.tls_key else None,
            "access_log": str(resolved(Path(log))) if log and log != "-" else log,
        }
    )
