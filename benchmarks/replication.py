"""Replicated storage's lag under steady writes: each standby's recovery point, sampled.

    PYTHONPATH=src .venv/bin/python benchmarks/replication.py [--duration 120]
        [--interval 10s] [--rate 20] [--attachment 4096] [--nodes 2]

A live demo cluster (real agents, sample apps, router; ``storage = "replicated"``,
each node its own home and SQLite database) takes ``--rate`` writes a second through
the router (a record with an attachment of ``--attachment`` bytes each) for
``--duration`` seconds. Every ``SAMPLE`` seconds it reads the cluster's status the way
``hakit status`` does (hakit.operator.commands.status_document) and takes each
standby's recovery point: the age of its newest complete copy (the copy's age in its
record plus the record's own age). It prints, per standby, the median, p95 and max of
those samples, the generations the active captured and the standby applied per
minute, and the bytes shipped (the growth of the standby's repository: only the
objects it lacked cross the network). Every loop is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hakit.demo.cluster import DemoCluster, DemoSettings, free_ports, wait_for
from hakit.operator.commands import status_document

SAMPLE = 0.5  # s between samples of the recovery points
TOKEN = "replication-benchmark-token-0123456789"


@dataclass
class Writer:
    """Up to ``rate`` writes a second through the router (one at a time: a slow answer slows
    it down) until ``stop``; acknowledged ones counted."""

    url: str
    rate: float
    attachment: int
    acknowledged: int = 0
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        payload = "x" * self.attachment
        began = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30) as client:
            turn = 0
            while not self.stop.is_set():
                turn += 1
                try:
                    response = client.post(
                        "/records", json={"title": f"bench {turn}", "attachment": payload}
                    )
                    if response.status_code == 201:
                        self.acknowledged += 1
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                self.stop.wait(max(0.0, began + turn / self.rate - time.monotonic()))


CAPTURED = re.compile(r"replication: captured \S+ under epoch \d+ in ([0-9.]+) s")
APPLIED = re.compile(r"replication: \S+ applied on \S+ in ([0-9.]+) s")


def logged_seconds(log: Path, pattern: re.Pattern[str]) -> list[float]:
    """The durations an agent logged (its captures, its applies)."""
    if not log.is_file():
        return []
    return [float(match.group(1)) for match in pattern.finditer(log.read_text(errors="replace"))]


def repository_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def generations(path: Path) -> list[str]:
    manifests = path / "manifests"
    return sorted(item.stem for item in manifests.glob("*.json")) if manifests.is_dir() else []


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class Sampler:
    cluster: DemoCluster
    points: dict[str, list[float]] = field(default_factory=dict)

    def sample(self) -> None:
        document = status_document(self.cluster.coordinator, self.cluster.cfg, time.time())
        for node in document["nodes"]:
            replica = node.get("replica") or {}
            if node.get("role") == "active" or replica.get("role") != "copy":
                continue
            if replica.get("generation") is None:
                continue
            age = float(replica.get("age") or 0.0) + float(node.get("age") or 0.0)
            self.points.setdefault(str(node["node"]), []).append(age)


@dataclass(frozen=True)
class Row:
    standby: str
    samples: list[float]
    captured_per_min: float
    applied_per_min: float
    shipped: int
    applied: int
    capture_seconds: list[float]  # the active's captures
    apply_seconds: list[float]  # this standby's pull + restore + swap


def run(args: argparse.Namespace) -> tuple[list[Row], Writer, float]:
    with tempfile.TemporaryDirectory(prefix="hakit-bench-replication-") as tmp:
        router_port, *ports = free_ports(1 + 2 * args.nodes)
        settings = DemoSettings(
            nodes=args.nodes,
            router_port=router_port,
            node_ports=tuple(ports[: args.nodes]),
            admin_ports=tuple(ports[args.nodes :]),
            admin_token=TOKEN,
            storage="replicated",
            replication_interval=args.interval,
            hold_timeout="30s",
        )
        cluster = DemoCluster(Path(tmp), settings)
        try:
            cluster.start()
            active = wait_for(cluster.active_running, 60, "an active node")
            with httpx.Client(base_url=cluster.router_url, timeout=10) as client:
                wait_for(lambda: client.get("/status").status_code == 200, 30, "the router")
            cfg = cluster.cfg
            repositories = {
                node.name: cfg.replication.repository(cfg.cluster.state_dir, node.name)
                for node in cfg.nodes
            }
            standbys = [name for name in repositories if name != active]
            sizes = {name: repository_bytes(repositories[name]) for name in standbys}
            known = {name: set(generations(path)) for name, path in repositories.items()}
            writer = Writer(cluster.router_url, args.rate, args.attachment)
            thread = threading.Thread(target=writer.run, daemon=True)
            sampler = Sampler(cluster)
            started = time.monotonic()
            thread.start()
            try:
                for _ in _ticks(started, args.duration):
                    sampler.sample()
            finally:
                writer.stop.set()
                thread.join(30)
            minutes = (time.monotonic() - started) / 60
            captured = len(set(generations(repositories[active])) - known[active])
            logs = cfg.cluster.state_dir / "logs"
            captures = logged_seconds(logs / f"agent-{active}.out", CAPTURED)
            rows = []
            for name in standbys:
                applied = len(set(generations(repositories[name])) - known[name])
                rows.append(
                    Row(
                        name,
                        sampler.points.get(name, []),
                        captured / minutes,
                        applied / minutes,
                        repository_bytes(repositories[name]) - sizes[name],
                        applied,
                        captures,
                        logged_seconds(logs / f"agent-{name}.out", APPLIED),
                    )
                )
            return rows, writer, minutes
        finally:
            cluster.stop()
            cluster.close()


def _ticks(started: float, duration: float) -> Iterator[None]:
    """One tick every SAMPLE seconds until ``duration`` has passed (bounded)."""
    for index in range(int(duration / SAMPLE) + 1):
        delay = started + index * SAMPLE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - started > duration:
            return
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of writes")
    parser.add_argument("--interval", default="10s", help="[replication] interval")
    parser.add_argument("--rate", type=float, default=20.0, help="writes a second")
    parser.add_argument("--attachment", type=int, default=4096, help="bytes per write")
    parser.add_argument("--nodes", type=int, default=2, help="nodes (one active)")
    args = parser.parse_args()
    rows, writer, minutes = run(args)
    print(
        f"replication interval {args.interval}, up to {args.rate:g} writes/s of "
        f"{args.attachment} B for {minutes * 60:.0f} s: {writer.acknowledged} acknowledged "
        f"({writer.acknowledged / (minutes * 60):.1f}/s), {writer.failed} failed"
    )
    print()
    print(
        "| standby | samples | recovery point median | p95 | max | generations captured/min "
        "| applied/min | bytes shipped | per generation applied | capture median | apply median |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if not row.samples:
            print(f"| {row.standby} | 0 | (no copy applied) | | | | | | | | |")
            continue
        per = row.shipped / row.applied if row.applied else 0
        print(
            f"| {row.standby} | {len(row.samples)} | {statistics.median(row.samples):.1f} s "
            f"| {percentile(row.samples, 0.95):.1f} s | {max(row.samples):.1f} s "
            f"| {row.captured_per_min:.1f} | {row.applied_per_min:.1f} "
            f"| {row.shipped / 1e6:.1f} MB | {per / 1e3:.0f} kB "
            f"| {_median(row.capture_seconds)} | {_median(row.apply_seconds)} |"
        )


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s" if values else "-"


if __name__ == "__main__":
    main()
