"""The timings hakit derives from a Config (lease_ttl, renew_interval, the app's timeouts).

One frozen ``DerivedTimings``, built by ``derived_timings(cfg)``, holds every
multiple of the lease TTL or the renewal interval the agent, the policy and the
operator commands act on, so each is computed in one place and ``hakit config
check`` can print them all (``derived_lines``). Each field says why it is that
multiple; ``WHY`` holds the same reasons for the printout.

Not to be confused with hakit.config.timing, which derives the *configured*
timers from ``failover.recovery_target`` and checks their worst case: these are
what follows from the configured timers, never written in a file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hakit.config.schema import Config
from hakit.config.values import Storage, format_duration

HEARTBEAT = 0.05  # seconds between the agent's heartbeat ticks, at most
SERVICE_WATCHDOG_MIN = 10.0  # systemd's watchdog never tighter: a loaded host is not a hung agent

# Why each derived timing is what it is: printed by ``hakit config check``.
WHY: dict[str, str] = {
    "self_fence_margin": "renew_interval / 2: a renewed lease is acted under until ttl minus "
    "this after it was asked for, so the agent stops before any other node may start",
    "heartbeat": f"min({format_duration(HEARTBEAT)}, renew_interval / 4): the agent's heartbeat and its "
    "watchdog tick several times per renewal, to self-fence right at the lease deadline",
    "watchdog_grace": "1 x lease_ttl: after a stall the watchdog (and the app's shim) waits "
    "this long for the agent to renew before killing the app",
    "waking_patience": "lease_ttl / 2: after a stall across its deadline the agent asks the "
    "store for its lease for this long, inside the watchdog's grace, else self-fences",
    "step_down_cooldown": "3 x lease_ttl: the new active's lease is taken and renewed a "
    "couple of times before the node that gave it up may compete again",
    "boot_grace": "2 x lease_ttl: on a cold start a node that was not the last active waits "
    "this long, so the last active's agent (newest data) can start and take the lease",
    "handover_timeout": "stop_timeout + startup_timeout + 4 x lease_ttl (+ replication.final_timeout "
    "with replicated storage): a switchover stops one app, ships a final generation, starts "
    "another, and the lease moves (expiry, takeover, renewals); after this the normal "
    "election resumes",
    "agent_alive_within": "3 x lease_ttl: an agent publishes every renewal; one that did "
    "within this is alive for an operator command (a slow store or a stall is not death)",
    "candidate_alive_within": "1 x lease_ttl: a standby reported within one TTL may be handed "
    "the active role when the data path is lost",
    "flush_bound": "1 x lease_ttl: a draining agent waits at most this for the store to take "
    "its record (a store slower than a TTL has lost the lease anyway)",
    "service_watchdog": f"3 x lease_ttl, at least {format_duration(SERVICE_WATCHDOG_MIN)}: "
    "systemd (WatchdogSec=, hakit systemd) kills an agent whose event loop stopped this long; "
    "its lease is long lost and its app stopped by then, and a fresh agent comes back standby",
}


@dataclass(frozen=True, slots=True)
class DerivedTimings:
    """Seconds, each derived from the config; ``WHY`` words the reason of each."""

    # A renewed lease is valid for lease_ttl from when it was asked for; the agent acts
    # under it until lease_ttl minus half a renewal, so it stops before anyone may start.
    self_fence_margin: float
    # Several ticks per renewal (at most HEARTBEAT apart): the deadline is checked in time.
    heartbeat: float
    # One TTL: a stalled agent that wakes has this long to renew before its app is killed.
    watchdog_grace: float
    # Half a TTL: the question to the store on waking is answered inside the watchdog's grace.
    waking_patience: float
    # Three TTLs: the new active's lease is established and renewed before we compete again.
    step_down_cooldown: float
    # Two TTLs: the last active's agent starts and takes the lease before the others compete.
    boot_grace: float
    # Stop one app, start the other, plus four TTLs for the lease to move and be renewed
    # (and, with replicated storage, the final generation's time: final_timeout).
    handover_timeout: float
    # Three TTLs (three renewals at least): an agent that published within is alive.
    agent_alive_within: float
    # One TTL: a standby that reported within may take the active role on data-path loss.
    candidate_alive_within: float
    # One TTL: a store that takes longer to flush has lost the lease anyway.
    flush_bound: float
    # Three TTLs (10 s at least): systemd kills an agent whose loop stopped this long.
    service_watchdog: float


def derived_timings(cfg: Config) -> DerivedTimings:
    """Every derived timing of ``cfg`` (pure; build it once and read its fields)."""
    ttl = cfg.coordination.lease_ttl
    renew = cfg.coordination.renew_interval
    # Replicated storage: the active ships a final generation before it releases the lease.
    final = cfg.replication.final_timeout if cfg.cluster.storage is Storage.REPLICATED else 0.0
    return DerivedTimings(
        self_fence_margin=renew / 2,
        heartbeat=min(HEARTBEAT, renew / 4),
        watchdog_grace=ttl,
        waking_patience=ttl / 2,
        step_down_cooldown=3 * ttl,
        boot_grace=2 * ttl,
        handover_timeout=cfg.app.stop_timeout + cfg.app.startup_timeout + 4 * ttl + final,
        agent_alive_within=3 * ttl,
        candidate_alive_within=ttl,
        flush_bound=ttl,
        service_watchdog=max(3 * ttl, SERVICE_WATCHDOG_MIN),
    )


def derived_lines(cfg: Config) -> list[str]:
    """For ``hakit config check``: each derived timing with its value and why."""
    timings = derived_timings(cfg)
    return ["derived timings (from lease_ttl, renew_interval and the app's timeouts):"] + [
        f"  {field.name} = {format_duration(getattr(timings, field.name))}: {WHY[field.name]}"
        for field in fields(timings)
    ]
