"""What an agent remembers of the coordination store across its own restarts.

Every coordinator remembers, in the process, the store's cluster identity and
the highest epoch it has seen (see ``SqliteCoordinator``). An agent's memory
also lives on disk, one small file per node, ``<state_dir>/memory/<node>.json``:
``{"identity": ..., "epoch": ..., "lineage": [...]}`` (the lineage of the store
it trusts, so that a store re-initialised twice still lists every identity). Loaded when the agent's coordinator is
opened, it keeps an agent that restarts and finds no store, or a fresh one,
from creating or accepting it and promoting itself under epoch 1 again.
``hakit init --reinit`` reads every file here: the new store lists their
identities in its lineage and starts its epochs above theirs.

Files are written atomically (a temporary file, fsync, rename, fsync of the
directory) with mode 0600, in a directory made 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hakit.errors import CoordinationError

MEMORY_DIR = "memory"


@dataclass(frozen=True, slots=True)
class Memory:
    identity: str  # the cluster identity of the store (a uuid4)
    epoch: int  # the highest epoch seen in it (0: none yet)
    lineage: tuple[str, ...] = ()  # the identities that store replaces


def memory_dir(state_dir: Path) -> Path:
    return Path(state_dir) / MEMORY_DIR


def memory_file(state_dir: Path, node: str) -> Path:
    """Where the agent of ``node`` keeps its memory."""
    return memory_dir(state_dir) / f"{node}.json"


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) for this user only: the leaf is made 0700.

    A directory that already exists keeps its mode (the admin chose it).
    """
    path = Path(path)
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return  # made meanwhile by another process: its creator set the mode
    os.chmod(path, 0o700)  # the umask may have taken bits away; exactly 0700


def read_memory(path: Path) -> Memory | None:
    """The memory in ``path``; None when there is no file. A damaged file is an error
    (never read as "no memory": that would let the agent accept any store)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CoordinationError(
            f"could not read the store memory {path}: {error}; make it readable by this user"
        ) from error
    try:
        doc = json.loads(text)
        identity, epoch, lineage = doc["identity"], doc["epoch"], doc.get("lineage", [])
        if not isinstance(identity, str) or not identity or type(epoch) is not int or epoch < 0:
            raise ValueError("identity must be a non-empty string, epoch an integer >= 0")
        if not isinstance(lineage, list) or not all(isinstance(x, str) for x in lineage):
            raise ValueError("lineage must be a list of identities")
    except (ValueError, KeyError, TypeError) as error:
        raise CoordinationError(
            f"the store memory {path} is damaged ({error}); expected "
            '{"identity": "<uuid>", "epoch": N}: restore it, or delete it and run '
            "`hakit init --reinit -c CONFIG` with --min-epoch above the highest epoch the "
            "cluster used"
        ) from error
    return Memory(identity, epoch, tuple(lineage))


def write_memory(path: Path, memory: Memory) -> Memory:
    """Store ``memory`` in ``path`` atomically; return what was stored.

    If the file already records the same identity with a higher epoch (another
    process of the same node), the higher epoch is kept: the memory never goes back.
    """
    path = Path(path)
    try:
        before = read_memory(path)
    except CoordinationError:
        before = None  # damaged: replaced by what this process knows
    if before is not None and before.identity == memory.identity and before.epoch > memory.epoch:
        memory = Memory(memory.identity, before.epoch, memory.lineage)
    text = json.dumps(
        {
            "identity": memory.identity,
            "epoch": memory.epoch,
            "lineage": list(memory.lineage),
            "written_at": time.time(),
        },
        sort_keys=True,
    )
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        make_private_dir(path.parent)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        fsync_dir(path.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise CoordinationError(
            f"could not write the store memory {path} (identity {memory.identity}, epoch "
            f"{memory.epoch}): {error}; make {path.parent} writable by this user and check "
            "free space (without it a restart of this agent could not tell a replaced store)"
        ) from error
    return memory


def read_memories(directory: Path) -> dict[str, Memory]:
    """Every node's memory in ``directory``, by node name (damaged files raise)."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found: dict[str, Memory] = {}
    for path in sorted(directory.glob("*.json")):
        memory = read_memory(path)
        if memory is not None:
            found[path.stem] = memory
    return found


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
