"""How soon a reader of the etcd backend sees a new leader: the watch behind the change token.

    .venv/bin/python benchmarks/etcd_watch.py [--rounds 20] [--members 3] [--interval 0.1]

Starts a local etcd cluster (hakit.demo.etcd, /usr/bin/etcd) in a temp dir on free
loopback ports, stopped (by PID) at the end. Each round a writer (its own
connection) takes the lease over under a new epoch, and the time from the start of
that call until a reader on another connection knows of it is measured:

- token: the reader's change token changed (``EtcdCoordinator.wait_change``: the
  watch delivered the commit; no request made);
- router poll: a ``hakit.router.viewreader.ViewReader`` polled every ``--interval``
  seconds as the router polls it (``quick()`` from the loop, the read only when the
  token changed) shows the new epoch;
- woken: the reader waits on the token (``wait_change``) and then reads its view.

Also the writer's own call (the commit round trip), and the reads a reader made
while idle (the token unchanged: none). Prints medians and maxima; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from hakit.coord.etcd import EtcdCoordinator, EtcdSection
from hakit.demo.etcd import start_etcd_cluster
from hakit.router.viewreader import ViewReader


def _store(endpoints: list[str]) -> EtcdCoordinator:
    return EtcdCoordinator(
        EtcdSection(endpoints=endpoints, prefix="/bench", timeout=2.0), cluster="watch"
    )


def _poller(
    reader: ViewReader, interval: float, stop: threading.Event, seen: dict[int, float]
) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            view = reader.quick() or reader()
            if view.lease is not None and view.lease.epoch not in seen:
                seen[view.lease.epoch] = time.monotonic()
            stop.wait(interval)

    return threading.Thread(target=run, daemon=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hakit-bench-etcd-") as root:
        cluster = start_etcd_cluster(Path(root), args.members)
        try:
            run(cluster.endpoints, args.rounds, args.interval)
        finally:
            cluster.stop()


def run(endpoints: list[str], rounds: int, interval: float) -> None:
    writer, watcher, polled, woken = (_store(endpoints) for _ in range(4))
    view_reader = ViewReader(polled)
    woken_reader = ViewReader(woken)
    writer.take_over("warmup", 5.0)
    for store in (watcher, polled, woken):
        store.data_version()  # the watches are made
    stop = threading.Event()
    seen: dict[int, float] = {}
    poll = _poller(view_reader, interval, stop, seen)
    poll.start()
    writes, tokens, polls, wakes = [], [], [], []
    try:
        for i in range(rounds):
            time.sleep(interval * 3 + 0.05)  # idle between rounds (the poller settles)
            token, woken_token = watcher.data_version(), woken.data_version()
            started = time.monotonic()
            lease = writer.take_over(f"n{i}", 5.0)
            writes.append(time.monotonic() - started)
            if watcher.wait_change(token, 5.0) != token:
                tokens.append(time.monotonic() - started)
            woken.wait_change(woken_token, 5.0)
            view = woken_reader()
            if view.lease is not None and view.lease.epoch == lease.epoch:
                wakes.append(time.monotonic() - started)
            deadline = time.monotonic() + 5
            while lease.epoch not in seen and time.monotonic() < deadline:
                time.sleep(0.001)
            if lease.epoch in seen:
                polls.append(seen[lease.epoch] - started)
        idle_before = view_reader.full_reads
        time.sleep(1.0)
        idle_reads = view_reader.full_reads - idle_before
    finally:
        stop.set()
        poll.join(timeout=5)
        for store in (writer, watcher, polled, woken):
            store.close()

    def line(name: str, values: list[float]) -> None:
        if not values:
            print(f"{name:<28} (none)")
            return
        print(
            f"{name:<28} median {statistics.median(values) * 1000:7.1f} ms   "
            f"max {max(values) * 1000:7.1f} ms   ({len(values)} of {rounds})"
        )

    print(f"etcd members {len(endpoints)}, {rounds} rounds, router poll every {interval:g} s")
    line("writer's take_over call", writes)
    line("reader's token changed", tokens)
    line("woken reader's view", wakes)
    line("router-poll view", polls)
    print(f"full reads in 1 s idle (max_age 1 s: at most ~1): {idle_reads}")


if __name__ == "__main__":
    main()
