"""Instructions per request of the hakit router, counted by valgrind (callgrind).

    .venv/bin/python benchmarks/router_instructions.py [--requests 3000] [--connections 20]
                                                       [--variant NAME="python -m hakit" ...]

Why: wall-clock CPU time on a shared virtual machine varies by 10-20 % between
runs, too much to see a change of a few percent. Callgrind counts the
instructions the router executes in user space (the kernel's share is not
counted: see benchmarks/router.py's "kernel" column for that), and the count
repeats closely for the same code and load, whatever else the machine does.

Each variant (by default the router as built, compiled when ``make native``
made a fresh build, and the same sources with ``HAKIT_PURE_PYTHON=1``) runs
under callgrind in front of the same nginx backend, is warmed up, has its
counters zeroed, then answers ``--requests`` keep-alive GETs of 20 bytes from
``--connections`` concurrent clients (bounded in count and time); the counters
are dumped and divided by the requests. Prints instructions per request and
the ratio to the first variant. Loopback only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import router as bench

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
CLIENT_TIMEOUT = 120.0  # seconds for the whole counted run (valgrind is ~50x slower)


async def one_client(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if not head.startswith(b"HTTP/1.1 200") or match is None:
                raise RuntimeError(f"unexpected answer: {head[:200]!r}")
            await reader.readexactly(int(match.group(1)))
    finally:
        writer.close()


async def load(port: int, requests: int, connections: int) -> None:
    per_client = requests // connections
    clients = [one_client(port, per_client) for _ in range(connections)]
    await asyncio.wait_for(asyncio.gather(*clients), CLIENT_TIMEOUT)


def callgrind_total(out_file: Path) -> int:
    for line in out_file.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out_file}")


def measure(
    tmp: Path, name: str, command: list[str], backend_port: int, args: argparse.Namespace
) -> float:
    out = tmp / f"callgrind-{name}.out"
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--collect-atstart=yes",
    ]
    # valgrind follows no exec: it goes after `env NAME=value ...`, right before the router.
    split = 0
    if command[:1] == ["env"]:
        split = 1
        while split < len(command) and "=" in command[split]:
            split += 1
    argv = [*command[:split], *valgrind, *command[split:]]
    proc, port = bench.start_hakit(tmp / name, backend_port, None, argv, name, listen_timeout=180.0)
    try:
        asyncio.run(load(port, args.connections * 10, args.connections))  # warm up
        subprocess.run(
            ["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True
        )
        requests = (args.requests // args.connections) * args.connections
        started = time.monotonic()
        asyncio.run(load(port, requests, args.connections))
        seconds = time.monotonic() - started
        subprocess.run(
            ["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True
        )
    finally:
        proc.stop()
    dumps = sorted(tmp.glob(f"callgrind-{name}.out*"), key=lambda p: p.stat().st_mtime)
    dumped = [d for d in dumps if d != out] or dumps
    total = callgrind_total(dumped[0])  # the --dump right after the counted run
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(dumped[0], args.keep / f"callgrind-{name}.out")  # for callgrind_annotate
    print(
        f"  {name}: {total:,} instructions for {requests} requests ({seconds:.0f} s under valgrind)"
    )
    return total / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--no-pure", action="store_true", help="skip HAKIT_PURE_PYTHON=1")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=COMMAND")
    parser.add_argument(
        "--keep", type=Path, help="copy each counted run's callgrind file into this directory"
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            sys.exit(f"{tool} is not installed (see scripts/debian-packages.txt)")
    variants = {"hakit": list(bench.HAKIT_COMMAND)}
    if not args.no_pure:
        variants["pure"] = ["env", f"{bench.hakit_native.PURE_ENV}=1", *bench.HAKIT_COMMAND]
    for variant in args.variant:
        name, _, command = variant.partition("=")
        variants[name] = command.split()
    print(f"hakit router modules: {bench.hakit_native.mode}")
    with tempfile.TemporaryDirectory(prefix="hakit-bench-instr-") as tmp_name:
        tmp = Path(tmp_name)
        backend, backend_port = bench.start_backend(tmp / "backend", "nginx")
        try:
            results = {
                name: measure(tmp, name, command, backend_port, args)
                for name, command in variants.items()
            }
        finally:
            backend.stop()
    first = next(iter(results.values()))
    print(f"{'variant':<10} {'instructions/request':>21} {'ratio':>7}")
    for name, per_request in results.items():
        print(f"{name:<10} {per_request:>21,.0f} {per_request / first:>6.2f}x")


if __name__ == "__main__":
    main()
