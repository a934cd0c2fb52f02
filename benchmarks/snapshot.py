"""Snapshots and backups of a generated home against rsync, restic and plain boto3.

    PYTHONPATH=src:. .venv/bin/python benchmarks/snapshot.py [--files 20000] [--size 2GB]
        [--repos 5] [--concurrency 8] [--limit 3600]

Generates a home (``--files`` files, ``--size`` bytes of incompressible data: 90 % of
the files small, 9 % medium, 1 % large holding half the bytes; ``--repos`` git
repositories with a few commits each, packed by ``git gc``), then, in the same run:

1. local: ``hakit snapshot create`` into a repository directory, then the new objects
   shipped to a second directory (copied, manifests last), against ``rsync -a`` of the
   home to another directory; full, then incremental after 1 % of the files
   (rewritten with new bytes of the same size) changed in one directory, and once more
   after another 1 % changed across every directory (``change_files``); and the capture
   alone against rsync (a capture straight into a second directory, as ``hakit backup
   create`` to a local directory does: one copy, like rsync's); the spread round is
   the median of ``ROUNDS`` (another 1 % each);
2. S3 (moto's standalone server on 127.0.0.1, one bucket each): ``hakit backup
   create`` (a filestore-config.xml naming the bucket, ``<max-concurrency>``
   ``--concurrency``) against ``restic backup`` (Debian's restic, its s3 backend,
   default connections) and against plain boto3 ``upload_file`` of every file
   (``--concurrency`` threads); full, then incremental for hakit and restic; then
   restore of the newest backup into a new directory, hakit against restic: the
   median of ``ROUNDS`` restores each, which of the two goes first alternating;
3. a standby of the local repository: after each spread round, its apply of the new
   generation (hakit.snapshot.apply: restored beside its home, the unchanged files
   linked from the generation it holds, swapped in; ``--apply``) against ``rsync -a
   --link-dest`` of the home into a new directory linking the previous copy's
   unchanged files (the median of ``ROUNDS``; its first apply restores everything
   and is not a row).

Every hakit operation, rsync and restic run as child processes: their wall time and
their peak RSS (``ru_maxrss`` of the child, from ``wait4``) are measured. The local
shipping and the boto3 uploads are child modes of this script (``--ship``,
``--upload``). The page cache is warm for everyone (the home was just written).

Prints one table of ratios (hakit / peer); asserts nothing. Every child has a time
limit (``--limit``) and is killed by its PID beyond it; moto's server is stopped by
its PID at the end; networking is on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hakit.snapshot.hashcache import RACY_NS

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
TARGET_FULL = 1.5  # hakit capture + ship time / rsync's, at most
TARGET_INCREMENTAL = 1.0
TARGET_THROUGHPUT = 1.0  # hakit's backup / restore throughput / restic's, at least
TARGET_RSS_MB = 300.0
# The measures whose times vary most from run to run on a shared VM (a restore writes
# 20,000 new files: ext4's inode allocation alone moved by seconds; the spread
# incremental is a fraction of a second): each is the median of ROUNDS rounds.
ROUNDS = 3
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 200MB, 2GB)")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


# --- children ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    peak_mb: float  # the child's peak RSS (its own; children of it not counted)
    output: str


# A small launcher forks the measured command and reports its ``ru_maxrss``: a child
# forked straight from this (large) process would carry this process's RSS into its
# own peak, as Linux keeps the pre-exec high-water mark. The floor is the launcher's
# own size at the fork (a bare interpreter, ~10 MB).
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(
    command: list[str], limit: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Run:
    """Run ``command`` to its end (its process group killed after ``limit`` s); wall time
    and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="hakit-bench-run-") as scratch:
        peak = Path(scratch, "maxrss")
        log = Path(scratch, "output")
        with open(log, "wb") as output:
            started = time.monotonic()
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", LAUNCHER, str(peak), *command],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
            try:
                code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the group this run started
                process.wait(timeout=30)
                raise TimeoutError(f"{command[0]} ran longer than {limit:g} s") from None
            seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        if code != 0:
            raise RuntimeError(f"{' '.join(command)} exited {code}:\n{text[-3000:]}")
        return Run(seconds, int(peak.read_text()) / 1024, text)


def median(runs: list[Run]) -> Run:
    """The run of median time, with the highest peak RSS of all (memory's worst case)."""
    middle = sorted(runs, key=lambda done: done.seconds)[len(runs) // 2]
    return Run(middle.seconds, max(done.peak_mb for done in runs), middle.output)


def inner(done: Run) -> Run:
    """The time a child of this script printed for its work (its start excluded)."""
    found = re.search(r"^seconds ([0-9.]+)$", done.output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no time printed:\n{done.output[-2000:]}")
    return Run(float(found.group(1)), done.peak_mb, done.output)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def s3_keys() -> dict[str, str]:
    """The test S3 server's credential, in the environment's names. Imported here, not at
    the top: the measured children import this file and need none of the test harness."""
    from tests.support.s3servers import KEYS

    return {name.upper(): value for name, value in KEYS.items()}


def child_env() -> dict[str, str]:
    paths = [str(ROOT / "src"), str(ROOT)]
    return {"PYTHONPATH": os.pathsep.join(paths), "COLUMNS": "200", **s3_keys()}


# --- the home ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Home:
    path: Path
    files: int
    bytes: int
    data: list[Path]  # the regular files outside the git repositories


def _sizes(count: int, total: int, rng: random.Random) -> list[int]:
    """90 % small (20 % of the bytes), 9 % medium (30 %), 1 % large (50 %), each +/- 50 %."""
    classes = [(0.90, 0.20), (0.09, 0.30), (0.01, 0.50)]
    sizes: list[int] = []
    for share, byte_share in classes:
        n = max(1, round(count * share))
        mean = total * byte_share / n
        sizes += [max(1, int(mean * rng.uniform(0.5, 1.5))) for _ in range(n)]
    rng.shuffle(sizes)
    return sizes[:count]


def _git(repo: Path, *args: str) -> None:
    env = {
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
        timeout=300,
    )


def make_home(path: Path, files: int, size: int, repos: int, seed: int = 14) -> Home:
    rng = random.Random(seed)
    per_repo = max(10, files // 200)  # working-tree files per repository
    for r in range(repos):
        repo = path / "repositories" / f"repo-{r}"
        repo.mkdir(parents=True)
        _git(repo, "init", "-q", "-b", "main")
        for commit in range(3):
            for i in range(per_repo):
                if commit == 0 or i % 3 == commit:
                    source = repo / "src" / f"module_{i}.txt"
                    source.parent.mkdir(exist_ok=True)
                    source.write_text(rng.randbytes(rng.randint(1000, 4000)).hex())
            _git(repo, "add", "-A")
            _git(repo, "commit", "-q", "-m", f"commit {commit}")
        _git(repo, "gc", "-q")
    git_files = sum(1 for p in (path / "repositories").rglob("*") if p.is_file()) if repos else 0
    count = max(1, files - git_files)
    data: list[Path] = []
    for i, n in enumerate(_sizes(count, size, rng)):
        file = path / "data" / "attachments" / f"{i % 100:02d}" / f"attachment-{i}.bin"
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(file, "wb") as handle:
            left = n
            while left:  # bounded: at most n / 8 MiB writes
                step = min(left, 8 << 20)
                handle.write(rng.randbytes(step))
                left -= step
        data.append(file)
    all_files = [p for p in path.rglob("*") if p.is_file()]
    return Home(path, len(all_files), sum(p.stat().st_size for p in all_files), data)


def change_files(
    home: Home, share: float = 0.01, seed: int = 15, spread: bool = False
) -> tuple[int, int]:
    """Rewrite ``share`` of the files with new bytes of the same size: every 1/share-th
    file in the order they were made, which puts them all in one of the 100 attachment
    directories (a day's new attachments); ``spread``: in path order, which puts them in
    every directory (the worst case for a capture that skips unchanged directories)."""
    rng = random.Random(seed)
    step = max(1, round(1 / share))
    files = sorted(home.data) if spread else home.data
    changed = files[::step][: max(1, round(home.files * share))]
    total = 0
    for file in changed:
        n = file.stat().st_size
        file.write_bytes(rng.randbytes(n))
        total += n
    return len(changed), total


# --- child modes: shipping objects, plain boto3 uploads ----------------------------------------


def ship(source: Path, destination: Path) -> None:
    """Copy the repository objects ``destination`` lacks; manifests last."""
    later: list[tuple[Path, Path]] = []
    for directory, dirs, names in os.walk(source):
        dirs[:] = [d for d in dirs if not (directory == str(source) and d == "tmp")]
        for name in names:
            src = Path(directory, name)
            dst = destination / src.relative_to(source)
            if dst.exists():
                continue
            if src.relative_to(source).parts[0] == "manifests":
                later.append((src, dst))
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    for src, dst in later:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def upload(home: Path, endpoint: str, bucket: str, concurrency: int) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config as BotoConfig

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        config=BotoConfig(s3={"addressing_style": "path"}, max_pool_connections=concurrency * 2),
    )
    transfer = TransferConfig(max_concurrency=concurrency)
    files = [p for p in home.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(concurrency) as pool:
        for done in pool.map(
            lambda p: client.upload_file(
                str(p), bucket, p.relative_to(home).as_posix(), Config=transfer
            ),
            files,
        ):
            del done


def apply_newest(repository: Path, home: Path) -> None:
    """A standby's apply of the repository's newest generation to ``home`` (restored
    beside it, the unchanged files linked from the generation it holds, swapped in), as
    the agent runs it: print its seconds; then the prune of older generations (not timed,
    as in the agent)."""
    from hakit.snapshot.apply import prepare_generation, prune_generations, swap_in
    from hakit.snapshot.store import open_local_store
    from hakit.snapshot.verify import read_manifest

    store = open_local_store(repository)
    started = time.monotonic()
    prepared = prepare_generation(store, read_manifest(store, None), home, None, link=True)
    swap_in(home, prepared, lambda: False)
    print(f"seconds {time.monotonic() - started:.6f}", flush=True)
    prune_generations(home, 3)


def hakit_operation(operation: str, config: Path, path: Path) -> None:
    """One hakit operation as the agent runs it (imports done): print its seconds.

    ``capture``: a snapshot into the repository ``path``; ``backup``: a backup to the
    configured target; ``restore``: the newest backup into the new directory ``path``."""
    from hakit.backup.stores import close_store, open_store
    from hakit.backup.target import resolve_target
    from hakit.config import load_config
    from hakit.snapshot.capture import CaptureOptions, create_snapshot
    from hakit.snapshot.restore import restore_generation
    from hakit.snapshot.store import Store, open_local_store

    cfg = load_config(config)
    started = time.monotonic()
    store: Store
    if operation == "capture":
        store = open_local_store(path, create=True)
        create_snapshot(store, CaptureOptions(home=cfg.app.home))
    elif operation == "backup":
        store = open_store(resolve_target(cfg), create=True)
        try:
            create_snapshot(store, CaptureOptions(home=cfg.app.home))
        finally:
            close_store(store)  # waits for the uploads still under way
    else:
        store = open_store(resolve_target(cfg), reading=True)
        try:
            restore_generation(store, None, path, [cfg.app.home])
        finally:
            close_store(store)
    print(f"seconds {time.monotonic() - started:.6f}")


FILESTORE = """<?xml version="1.1" ?>
<filestore-config>
  <filestores>
    <s3-filestore id="backupBucket">
      <config>
        <bucket-name>{bucket}</bucket-name>
        <region>us-east-1</region>
        <endpoint-override>{endpoint}</endpoint-override>
        <max-concurrency>{concurrency}</max-concurrency>
      </config>
    </s3-filestore>
  </filestores>
  <associations>
    <association target="backups" file-store="backupBucket"/>
  </associations>
</filestore-config>
"""

CONFIG = """
[cluster]
name = "bench"
state_dir = "state"
[app]
start = "true"
home = "{home}"
[backup]
filestore_config = "filestore-config.xml"
access_key_env = "AWS_ACCESS_KEY_ID"
secret_key_env = "AWS_SECRET_ACCESS_KEY"
[[nodes]]
name = "node1"
port = 18101
[[nodes]]
name = "node2"
port = 18102
"""


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Row:
    measure: str
    hakit: str
    peer: str
    ratio: str
    target: str
    met: str


def mb(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def rate(size: int, seconds: float) -> float:
    return size / (1 << 20) / seconds


def note(text: str) -> None:
    print(text, flush=True)


def measure(args: argparse.Namespace, tmp: Path) -> tuple[Home, list[Row]]:
    limit = float(args.limit)
    env = child_env()
    hakit = python("-m", "hakit")
    rows: list[Row] = []

    started = time.monotonic()
    home = make_home(tmp / "home", args.files, args.size, args.repos)
    note(
        f"home: {home.files} files, {mb(home.bytes)}, {args.repos} git repositories "
        f"(generated in {time.monotonic() - started:.0f} s)"
    )
    config = tmp / "hakit.toml"
    config.write_text(CONFIG.format(home=home.path))
    # hakit re-reads a file whose times are within RACY_NS of the previous capture's
    # start (git's "racily clean"); a home written just now would be read again in
    # full by the incremental capture. A live home's files are older than that.
    time.sleep(RACY_NS / 1e9 + 0.5)
    startup = run([*hakit, "--help"], limit, env, tmp)
    note(f"hakit CLI start (python -m hakit --help): {startup.seconds:.2f} s")

    def operation(name: str, path: Path) -> Run:
        """A hakit operation in a child: the time of the operation itself (imports and
        interpreter start excluded, as in the running agent), the child's peak RSS."""
        return inner(
            run(python(__file__, "--hakit", name, str(config), str(path)), limit, env, tmp)
        )

    # 1. local: capture + ship against rsync -a
    repo, shipped, mirror = tmp / "repo", tmp / "shipped", tmp / "rsync-copy"
    shipped.mkdir()

    def local_round(kind: str) -> tuple[Run, Run, Run]:
        capture = operation("capture", repo)
        shipping = inner(run(python(__file__, "--ship", str(repo), str(shipped)), limit, env, tmp))
        rsync = run(["rsync", "-a", f"{home.path}/", f"{mirror}/"], limit)
        note(
            f"local {kind}: hakit capture {capture.seconds:.2f} s "
            f"(peak {capture.peak_mb:.0f} MB) + ship {shipping.seconds:.2f} s; "
            f"rsync -a {rsync.seconds:.2f} s (peak {rsync.peak_mb:.0f} MB)"
        )
        return capture, shipping, rsync

    full = local_round("full")

    # 2. S3: hakit backup, restic, boto3
    from tests.support.s3servers import start_moto

    server = start_moto()  # stopped by its PID below
    try:
        endpoint = server.endpoint
        client = server.client()
        for bucket in ("hakit", "restic", "boto3"):
            client.create_bucket(Bucket=bucket)
        (tmp / "filestore-config.xml").write_text(
            FILESTORE.format(bucket="hakit", endpoint=endpoint, concurrency=args.concurrency)
        )
        restic_env = {
            **s3_keys(),
            "RESTIC_PASSWORD": "benchmark",
            "RESTIC_REPOSITORY": f"s3:{endpoint}/restic",
            "RESTIC_CACHE_DIR": str(tmp / "restic-cache"),
        }
        run(["restic", "init"], limit, restic_env)

        def s3_round(kind: str) -> tuple[Run, Run]:
            backup = operation("backup", tmp)
            restic = run(
                ["restic", "backup", "--quiet", "--host", "bench", str(home.path)],
                limit,
                restic_env,
            )
            note(
                f"S3 {kind}: hakit backup {backup.seconds:.2f} s (peak {backup.peak_mb:.0f} MB); "
                f"restic {restic.seconds:.2f} s (peak {restic.peak_mb:.0f} MB)"
            )
            return backup, restic

        backup_full, restic_full = s3_round("full")
        boto = run(
            python(__file__, "--upload", str(home.path), endpoint, "boto3", str(args.concurrency)),
            limit,
            env,
        )
        note(f"S3 full: boto3 upload_file of every file {boto.seconds:.2f} s")

        changed, changed_bytes = change_files(home)
        note(f"changed {changed} files ({mb(changed_bytes)}) in one directory")
        # Past the racy window (as above): the next round's capture trusts their stats.
        time.sleep(RACY_NS / 1e9 + 0.5)
        incremental = local_round("incremental")
        backup_incr, restic_incr = s3_round("incremental")

        def restore_round(number: int) -> tuple[Run, Run]:
            def ours() -> Run:
                return operation("restore", tmp / f"restore-hakit-{number}")

            def peer() -> Run:
                target = tmp / f"restore-restic-{number}"
                return run(
                    ["restic", "restore", "latest", "--target", str(target)], limit, restic_env
                )

            if number % 2:  # alternating: neither always restores onto the other's fresh files
                theirs = peer()
                restored = ours()
            else:
                restored = ours()
                theirs = peer()
            note(
                f"S3 restore {number + 1}/{ROUNDS}: hakit {restored.seconds:.2f} s "
                f"(peak {restored.peak_mb:.0f} MB); restic {theirs.seconds:.2f} s "
                f"(peak {theirs.peak_mb:.0f} MB)"
            )
            return restored, theirs

        restores = [restore_round(number) for number in range(ROUNDS)]
        restored = median([ours for ours, _ in restores])
        restic_restored = median([theirs for _, theirs in restores])

        # A standby of the local repository (its first apply restores everything), and
        # its peer: rsync's copies, each new one linking the unchanged files of the one
        # before (--link-dest), the first a hard-linked copy of rsync's mirror.
        standby = tmp / "standby" / "home"
        standby.parent.mkdir()

        def apply() -> Run:
            command = python(__file__, "--apply", str(repo), str(standby))
            return inner(run(command, limit, env, tmp))

        first_apply = apply()
        note(f"standby: first apply (everything restored) {first_apply.seconds:.2f} s")
        subprocess.run(["cp", "-al", str(mirror), str(tmp / "linked-0")], check=True)

        def spread_round(number: int) -> tuple[Run, Run, Run, Run, Run]:
            changed, changed_bytes = change_files(home, seed=16 + number, spread=True)
            note(f"changed {changed} files ({mb(changed_bytes)}) across every directory")
            time.sleep(RACY_NS / 1e9 + 0.5)
            capture, shipping, rsync = local_round(f"incremental, spread {number + 1}/{ROUNDS}")
            applied = apply()
            base, copy = tmp / f"linked-{number}", tmp / f"linked-{number + 1}"
            linked = run(["rsync", "-a", f"--link-dest={base}", f"{home.path}/", f"{copy}/"], limit)
            note(
                f"standby apply {applied.seconds:.2f} s (peak {applied.peak_mb:.0f} MB); "
                f"rsync -a --link-dest {linked.seconds:.2f} s"
            )
            return capture, shipping, rsync, applied, linked

        spreads = [spread_round(number) for number in range(ROUNDS)]
        spread = (
            median([done[0] for done in spreads]),
            median([done[1] for done in spreads]),
            median([done[2] for done in spreads]),
        )
        applies = (
            median([done[3] for done in spreads]),
            Run(0.0, 0.0, ""),
            median([done[4] for done in spreads]),
        )
    finally:
        server.stop()

    def time_row(
        name: str, runs: tuple[Run, Run, Run], target: float | None, ship: bool = True
    ) -> Row:
        ours = runs[0].seconds + (runs[1].seconds if ship else 0.0)
        ratio = ours / runs[2].seconds
        return Row(
            name,
            f"{ours:.2f} s",
            f"{runs[2].seconds:.2f} s",
            f"{ratio:.2f}x",
            "-" if target is None else f"<= {target:g}x",
            "-" if target is None else ("yes" if ratio <= target else "no"),
        )

    def throughput_row(name: str, ours: Run, peer: Run, target: float | None) -> Row:
        a, b = rate(home.bytes, ours.seconds), rate(home.bytes, peer.seconds)
        ratio = a / b
        return Row(
            name,
            f"{a:.1f} MiB/s",
            f"{b:.1f} MiB/s",
            f"{ratio:.2f}x",
            "-" if target is None else f">= {target:g}x",
            "-" if target is None else ("yes" if ratio >= target else "no"),
        )

    rows.append(
        Row(
            "hakit CLI start (python -m hakit --help)",
            f"{startup.seconds:.2f} s",
            "-",
            "-",
            "-",
            "-",
        )
    )
    rows.append(time_row("local full: capture + ship vs rsync -a", full, TARGET_FULL))
    rows.append(time_row("local incremental (1 %) vs rsync -a", incremental, TARGET_INCREMENTAL))
    rows.append(time_row("local incremental (1 %, spread) vs rsync -a", spread, TARGET_INCREMENTAL))
    # The capture alone: a repository directory written straight from the home is what
    # `hakit backup create` to a local directory does (one copy, like rsync's).
    rows.append(time_row("  capture alone (full) vs rsync -a", full, TARGET_FULL, ship=False))
    rows.append(
        time_row(
            "  capture alone (incremental) vs rsync -a", incremental, TARGET_INCREMENTAL, False
        )
    )
    rows.append(time_row("  capture alone (spread) vs rsync -a", spread, TARGET_INCREMENTAL, False))
    rows.append(time_row("standby apply (1 %, spread) vs rsync --link-dest", applies, None, False))
    rows.append(
        throughput_row("S3 full backup vs restic", backup_full, restic_full, TARGET_THROUGHPUT)
    )
    rows.append(throughput_row("S3 full backup vs boto3 upload_file", backup_full, boto, None))
    ratio = backup_incr.seconds / restic_incr.seconds
    rows.append(
        Row(
            "S3 incremental (1 %) backup time vs restic",
            f"{backup_incr.seconds:.2f} s",
            f"{restic_incr.seconds:.2f} s",
            f"{ratio:.2f}x",
            f"<= {TARGET_INCREMENTAL:g}x",
            "yes" if ratio <= TARGET_INCREMENTAL else "no",
        )
    )
    rows.append(
        throughput_row("S3 restore vs restic", restored, restic_restored, TARGET_THROUGHPUT)
    )
    for name, ours, peer in (
        ("peak RSS, local full capture (peer: rsync)", full[0], full[2]),
        ("peak RSS, S3 full backup (peer: restic)", backup_full, restic_full),
        ("peak RSS, S3 restore (peer: restic)", restored, restic_restored),
    ):
        rows.append(
            Row(
                name,
                f"{ours.peak_mb:.0f} MB",
                f"{peer.peak_mb:.0f} MB",
                f"{ours.peak_mb / peer.peak_mb:.2f}x",
                f"< {TARGET_RSS_MB:g} MB",
                "yes" if ours.peak_mb < TARGET_RSS_MB else "no",
            )
        )
    return home, rows


def table(rows: list[Row]) -> list[str]:
    head = f"{'measure':<45} {'hakit':>12} {'peer':>12} {'ratio':>7}  {'target':<10} met?"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.measure:<45} {r.hakit:>12} {r.peer:>12} {r.ratio:>7}  {r.target:<10} {r.met}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--size", type=parse_size, default=parse_size("2GB"))
    parser.add_argument("--repos", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--limit", type=float, default=3600, help="seconds per child at most")
    parser.add_argument(
        "--ship", nargs=2, metavar=("SOURCE", "DESTINATION"), help=argparse.SUPPRESS
    )
    parser.add_argument("--upload", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--hakit", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--apply", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.apply:
        apply_newest(Path(args.apply[0]), Path(args.apply[1]))
        return
    if args.ship:
        started = time.monotonic()
        ship(Path(args.ship[0]), Path(args.ship[1]))
        print(f"seconds {time.monotonic() - started:.6f}")
        return
    if args.hakit:
        hakit_operation(args.hakit[0], Path(args.hakit[1]), Path(args.hakit[2]))
        return
    if args.upload:
        upload(Path(args.upload[0]), args.upload[1], args.upload[2], int(args.upload[3]))
        return
    for tool in ("rsync", "restic", "git"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (scripts/debian-packages.txt)")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hakit-bench-snapshot-") as tmp:
        home, rows = measure(args, Path(tmp))
    print()
    print(
        f"home: {home.files} files, {mb(home.bytes)}, {args.repos} git repositories; "
        f"1 % of the files changed for the incremental rows (in one directory; spread: in "
        f"every directory; median of {ROUNDS} rounds); S3: moto on 127.0.0.1 (restore: median "
        f"of {ROUNDS} rounds, the order alternating), "
        f"hakit and boto3 at concurrency {args.concurrency}, restic's defaults; hakit's "
        "times (and the shipping's) are the operation in a running process (the agent's "
        "case): the CLI adds its start (first row); rsync's and restic's include their start"
    )
    print("\n".join(table(rows)))
    print(
        f"loadavg (1 min) at start {load:.2f}, at end {os.getloadavg()[0]:.2f}; "
        f"{os.cpu_count()} CPUs (shared with other work: the numbers are noisy)"
    )


if __name__ == "__main__":
    main()
