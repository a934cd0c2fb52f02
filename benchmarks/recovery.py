"""Time from `kill -9` of the active app to the first successful request through the router.

    .venv/bin/python benchmarks/recovery.py [--trials 10]

Runs the demo cluster (cold standby, sample app with its 1 s startup delay) twice:
once with a large restart budget (every crash is restarted on the same node) and
once with restart_attempts = 0 (every crash fails over to the standby). Prints the
median, p90 and max of each, and the sample app's own startup time measured in
the same run as the peer: what a restart cannot beat.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from sample_app import startup_times, wait_ok  # benchmarks/sample_app.py, beside this script

from hakit.demo.cluster import DemoCluster, DemoSettings, free_ports, wait_for


def first_success_after(url: str, started: float, limit: float) -> float:
    """Poll every 10 ms until a GET succeeds; seconds since ``started``."""
    took = wait_ok(url, started, limit)
    if took is None:
        raise TimeoutError(f"no successful request within {limit} s")
    return took


def measure(kind: str, trials: int, restart_attempts: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix=f"hakit-bench-{kind}-") as tmp:
        router_port, *node_ports = free_ports(3)
        settings = DemoSettings(
            router_port=router_port,
            node_ports=tuple(node_ports),
            restart_attempts=restart_attempts,
        )
        cluster = DemoCluster(Path(tmp), settings)
        cluster.start()
        samples = []
        try:
            url = cluster.router_url + "/status"
            for _ in range(trials):
                active = wait_for(cluster.active_running, 60, "an active node")
                first_success_after(url, time.monotonic(), 30)
                # Let the step-down cooldown of a previous failover pass, so
                # each trial starts from the same place.
                time.sleep(3 * cluster.cfg.coordination.lease_ttl if restart_attempts == 0 else 0.5)
                pid = cluster.app_pid(active)
                assert pid is not None
                started = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                samples.append(first_success_after(url, started, 60))
        finally:
            cluster.stop()
            cluster.close()
        return samples


def summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"{name:<28} n={len(samples):<3} median {statistics.median(samples):6.2f} s"
        f"   p90 {p90:6.2f} s   max {ordered[-1]:6.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    startup = startup_times(args.trials)
    restart = measure("restart", args.trials, restart_attempts=1000)
    failover = measure("failover", args.trials, restart_attempts=0)
    print(summary("sample app startup (peer)", startup))
    print(summary("kill -9 -> served (restart)", restart))
    print(summary("kill -9 -> served (failover)", failover))
    base = statistics.median(startup)
    print(
        f"restart / app startup = {statistics.median(restart) / base:.2f}x; "
        f"failover / app startup = {statistics.median(failover) / base:.2f}x"
    )


if __name__ == "__main__":
    main()
