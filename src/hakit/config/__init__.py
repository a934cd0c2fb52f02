"""hakit.toml: its schema as frozen validated objects, the loader, the checks, the timers.

- schema.py          ``Config``, with ``[coordination]`` and ``[admin]``
- sections/          the other sections' models, one module per part (cluster, app, router...)
- values.py          the value types: durations, sizes, addresses, commands, placeholders, enums
- loader.py          ``load_config``: read, validate every section, check, resolve paths
- check.py           checks across sections, warnings, the summary of ``hakit config check``
- problems.py        every problem worded with file, line and key
- toml_positions.py  where a key is in the TOML source (line numbers for the problems)
- timing.py          timers derived from ``failover.recovery_target``
- worstcase.py       the worst-case recovery per failure kind, and the timing rules
- derived.py         ``DerivedTimings``: the lease_ttl / renew_interval multiples hakit acts on

``from hakit.config import Config, load_config`` (and every section and value
type) is the way in; the modules import each other directly, never this package.
"""

from hakit.config.derived import DerivedTimings, derived_timings
from hakit.config.loader import load_config
from hakit.config.schema import MIN_TOKEN_LENGTH, AdminConfig, Config, CoordinationConfig
from hakit.config.sections.app import (
    AUTO_FAILBACK_UNSUPPORTED,
    DEFAULT_HEALTH_CHECK,
    AppConfig,
    FailoverConfig,
    HealthCheckConfig,
    HealthConfig,
    OnFailedStart,
)
from hakit.config.sections.base import PATTERN_HINTS
from hakit.config.sections.cluster import ClusterConfig, NodeConfig
from hakit.config.sections.notify import (
    DEFAULT_NOTIFY_EVENTS,
    NOTIFY_EVENTS,
    MailAddress,
    NotifyConfig,
)
from hakit.config.sections.router import RouterConfig, TcpProxyConfig
from hakit.config.sections.snapshot import SnapshotConfig
from hakit.config.values import (
    FENCE_PLACEHOLDERS,
    MAX_DURATION,
    PLACEHOLDERS,
    STANDBY_MODES,
    AccessLogFormat,
    Argv,
    Balance,
    ByteCount,
    Command,
    Duration,
    Mode,
    PositiveDuration,
    Size,
    Sticky,
    StickyDown,
    Storage,
    TcpCheck,
    format_duration,
    mask_password,
    parse_duration,
    parse_listen,
    parse_size,
    placeholder_problem,
    sqlite_path,
)

__all__ = [
    "AUTO_FAILBACK_UNSUPPORTED",
    "DEFAULT_HEALTH_CHECK",
    "DEFAULT_NOTIFY_EVENTS",
    "FENCE_PLACEHOLDERS",
    "MAX_DURATION",
    "MIN_TOKEN_LENGTH",
    "NOTIFY_EVENTS",
    "PATTERN_HINTS",
    "PLACEHOLDERS",
    "STANDBY_MODES",
    "AccessLogFormat",
    "AdminConfig",
    "AppConfig",
    "Argv",
    "Balance",
    "ByteCount",
    "ClusterConfig",
    "Command",
    "Config",
    "CoordinationConfig",
    "DerivedTimings",
    "Duration",
    "FailoverConfig",
    "HealthCheckConfig",
    "HealthConfig",
    "MailAddress",
    "Mode",
    "NodeConfig",
    "NotifyConfig",
    "OnFailedStart",
    "PositiveDuration",
    "RouterConfig",
    "Size",
    "SnapshotConfig",
    "Sticky",
    "StickyDown",
    "Storage",
    "TcpCheck",
    "TcpProxyConfig",
    "derived_timings",
    "format_duration",
    "load_config",
    "mask_password",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "placeholder_problem",
    "sqlite_path",
]
