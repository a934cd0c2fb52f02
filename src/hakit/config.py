"""hakit.toml: schema as frozen pydantic models.

The loader (``load_config``) turns every validation problem into a line naming
file, line, key and what is expected. Field names here are the TOML keys.

Example (see examples/ for complete files)::

    [cluster]
    name = "demo"
    mode = "cold-standby"
    storage = "shared"
    state_dir = "/var/lib/hakit"

    [app]
    start = ["python", "-m", "hakit.demo", "--port", "{port}"]
    home = "/srv/app/home"
    database_url = "sqlite:////srv/app/app.db"

    [[nodes]]
    name = "node1"
    host = "127.0.0.1"
    port = 8101
    route = "n1"
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# --- value types ------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """'15s', '2m', '500ms', '1.5h' or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"15s\" or \"2m\", got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f'expected a duration such as "15s", "2m" or "500ms", got {value!r}')


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Mode(enum.StrEnum):
    RESTART_ONLY = "restart-only"
    COLD_STANDBY = "cold-standby"
    WARM_STANDBY = "warm-standby"
    ACTIVE_ACTIVE = "active-active"


class Storage(enum.StrEnum):
    SHARED = "shared"  # one home + one database used by whichever node is active


class Sticky(enum.StrEnum):
    NONE = "none"
    LB_COOKIE = "lb-cookie"
    APP_COOKIE_SUFFIX = "app-cookie-suffix"
    APP_COOKIE_PREFIX = "app-cookie-prefix"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- sections ---------------------------------------------------------------


class ClusterConfig(_Section):
    name: str = "hakit"
    mode: Mode = Mode.COLD_STANDBY
    storage: Storage = Storage.SHARED
    # Coordination database, per-node app logs and pid files live here.
    # Relative paths are resolved against the config file's directory.
    state_dir: Path = Path("hakit-state")


class CoordinationConfig(_Section):
    backend: str = "sqlite"  # "sqlite" for now; "etcd" later
    path: Path | None = None  # sqlite file; default <state_dir>/coordination.db
    lease_ttl: Duration = 3.0  # leader lease time to live
    renew_interval: Duration = 1.0  # must be well below lease_ttl


class HealthCheckConfig(_Section):
    """How the agent learns the app's state. Exactly one way is chosen:

    - ``status_url``: speaks the /status contract (DESIGN.md);
    - ``url`` with ``expect_status`` and/or ``expect_body`` (regex): any health page;
      a match means RUNNING, anything else ERROR;
    - ``command``: exit 0 means RUNNING; otherwise a contract state name printed on
      stdout is taken as the state, else ERROR.

    ``{host}`` and ``{port}`` are replaced with the node's values.
    """

    status_url: str | None = None
    url: str | None = None
    expect_status: int | None = None
    expect_body: str | None = None
    command: tuple[str, ...] | None = None


class AppConfig(_Section):
    # argv list (no shell) or a string (run with /bin/sh -c). {host}, {port},
    # {route}, {node}, {home}, {database_url} are substituted.
    start: tuple[str, ...] | str
    stop: tuple[str, ...] | str | None = None  # default: SIGTERM to the process group
    env: dict[str, str] = Field(default_factory=dict)
    home: Path
    database_url: str
    startup_timeout: Duration = 120.0
    stop_timeout: Duration = 30.0
    health: HealthCheckConfig = HealthCheckConfig(status_url="http://{host}:{port}/status")


class HealthConfig(_Section):
    interval: Duration = 1.0  # between /status probes
    probe_timeout: Duration = 2.0  # one probe's own deadline
    timeout: Duration = 30.0  # patience: failures must span at least this long
    fall: int = Field(default=3, ge=1)  # consecutive failures before a node counts as failed
    rise: int = Field(default=2, ge=1)  # consecutive successes before it counts as healthy


class FailoverConfig(_Section):
    restart_attempts: int = Field(default=2, ge=0)
    failure_window: Duration = 600.0  # failures older than this are forgotten
    auto_failback: bool = False


class RouterConfig(_Section):
    listen: str = "127.0.0.1:8080"  # host:port
    sticky: Sticky = Sticky.LB_COOKIE
    cookie_name: str = "ROUTEID"
    app_cookie_name: str = "JSESSIONID"
    retry_after: Duration = 30.0  # Retry-After on the maintenance page
    hold_timeout: Duration = 0.0  # idempotent requests wait this long for a node (0: no hold)
    state_poll_interval: Duration = 0.1  # how often the router reads the coordination store


class NodeConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    route: str = Field(default="", pattern=r"^[A-Za-z0-9_-]*$")  # default: the node name
    admin_port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def route_name(self) -> str:
        return self.route or self.name


class Config(_Section):
    cluster: ClusterConfig = ClusterConfig()
    coordination: CoordinationConfig = CoordinationConfig()
    app: AppConfig
    health: HealthConfig = HealthConfig()
    failover: FailoverConfig = FailoverConfig()
    router: RouterConfig = RouterConfig()
    nodes: tuple[NodeConfig, ...]
    # The file this was loaded from (set by the loader, not a TOML key).
    source: Path | None = Field(default=None, exclude=True)

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node named {name!r} in the config (known: {known})")

    @property
    def coordination_path(self) -> Path:
        return self.coordination.path or self.cluster.state_dir / "coordination.db"
