"""Reading a generation's bytes back, concurrently, every object and every chunk checked.

``plan_fetches`` (pure) groups the chunks a generation needs by the object that
holds them (its own blob, or a pack), in the order they are first needed, so
each object is fetched once however many files share it. ``fetch_objects``
then fetches them on a pool of ``concurrency`` threads: each blob is checked
against its name (SHA-256), each chunk of a pack against its own hash (so every
byte delivered is checked once, not twice), and only then handed to ``deliver``
(restore writes it into its files; verify drops it).

- **Bounded memory.** The objects handed to the pool whose bytes are not yet
  delivered and dropped are at most ``budget`` bytes (by the size the manifest
  implies: a blob's size, a pack's last needed byte), beyond the one object that
  is larger than the whole budget; the submitting thread waits for room.
- **The first failure stops the rest** (``on_problem`` None: restore): no new
  fetch starts, the ones under way stop before their next chunk is delivered
  (a request in flight ends by its own timeout), and the failure is raised in the
  caller's thread, so when ``fetch_objects`` returns or raises no worker is
  writing any more (the caller may then remove what was written). An interrupt
  (KeyboardInterrupt) of the caller does the same. With ``on_problem`` (verify)
  each object's problem is reported and the others still fetched.
- **Concurrency** comes from the store (``read_concurrency``): an S3 store's
  configured ``max_concurrency``; a local directory a few threads (hashing and
  copying overlap, sha256 and file I/O release the GIL).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from hakit.snapshot.format import ChunkRef, MiB, SnapshotError, object_key
from hakit.snapshot.heap import reuses_buffers, reusing_large_buffers
from hakit.snapshot.store import Store

LOCAL_CONCURRENCY = 4  # a local directory: enough to overlap hashing with reading and writing
DEFAULT_BUDGET = 96 * MiB  # bytes fetched and not yet delivered (restore's RSS < 300 MB)

# A chunk's bytes, checked: (ref, data). ``data`` is valid during the call only.
Deliver = Callable[[ChunkRef, memoryview], None]
# Each object's problem, when the caller collects them instead of stopping (verify).
OnProblem = Callable[["ObjectFetch", SnapshotError], None]
# Called in the worker before each object is fetched: (the object's key). For tests.
OnFetch = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ObjectFetch:
    """One object to fetch and the distinct chunks needed from it."""

    key: str
    digest: str  # the object's name: a blob's hash or a pack's id
    chunks: tuple[ChunkRef, ...]

    @property
    def whole(self) -> bool:
        """Checked as a whole: a blob, whose hash is its one chunk's. A pack is not: each
        chunk taken from it is checked against its own hash (``chunk_of``), which is what
        the restored bytes need, and hashing the whole pack too would hash them twice."""
        return all(ref.pack is None for ref in self.chunks)

    @property
    def size(self) -> int:
        """The bytes it holds at least (a pack may hold more than is needed from it)."""
        return max((ref.offset + ref.size for ref in self.chunks), default=0)


@dataclass(slots=True)
class FetchStats:
    objects_read: int = 0
    bytes_read: int = 0
    peak_in_flight: int = 0  # the most bytes reserved at once (the budget's check)


def plan_fetches(refs: Iterable[ChunkRef]) -> list[ObjectFetch]:
    """The objects holding ``refs``, each once, in the order first needed; each with its
    distinct chunks (a chunk needed twice is fetched and checked once). Pure."""
    grouped: dict[str, tuple[str, dict[ChunkRef, None]]] = {}
    for ref in refs:
        key = object_key(ref)
        digest = ref.hash if ref.pack is None else ref.pack
        grouped.setdefault(key, (digest, {}))[1][ref] = None
    return [ObjectFetch(key, digest, tuple(chunks)) for key, (digest, chunks) in grouped.items()]


def read_concurrency(store: Store) -> int:
    """How many objects to fetch at once from ``store``: a store (or the store a wrapper
    such as ``EncryptedStore`` holds as ``inner``) may say so by ``read_concurrency``."""
    current: object = store
    for _ in range(8):  # wrappers are one or two deep; bounded all the same
        value = getattr(current, "read_concurrency", None)
        if isinstance(value, int) and value > 0:
            return value
        current = getattr(current, "inner", None)
        if current is None:
            break
    return LOCAL_CONCURRENCY


def check_object(fetch: ObjectFetch, data: bytes) -> None:
    """``data`` is the object ``fetch`` names; raises SnapshotError when not."""
    if hashlib.sha256(data).hexdigest() != fetch.digest:
        raise SnapshotError(f"object {fetch.key} is corrupt: its SHA-256 is not its name")


def chunk_of(fetch: ObjectFetch, data: bytes, ref: ChunkRef) -> memoryview:
    """The bytes of ``ref`` in the checked object ``data``, checked against its hash."""
    if ref.pack is None:
        if len(data) != ref.size:
            raise SnapshotError(f"blob {ref.hash} has {len(data)} bytes, expected {ref.size}")
        return memoryview(data)  # the object's own hash is the chunk's: checked
    view = memoryview(data)[ref.offset : ref.offset + ref.size]
    if len(view) != ref.size:
        raise SnapshotError(f"blob {ref.hash} has {len(view)} bytes, expected {ref.size}")
    if hashlib.sha256(view).hexdigest() != ref.hash:
        raise SnapshotError(f"blob {ref.hash} in pack {ref.pack} at offset {ref.offset} is corrupt")
    return view


def read_in_order(store: Store, refs: Iterable[ChunkRef]) -> Iterator[bytes]:
    """The bytes of ``refs`` one after the other, each object fetched and checked as
    ``fetch_objects`` does, one at a time: for a stream that must be read in order (a
    base backup's archive, hakit.snapshot.pgdatadir)."""
    for ref in refs:
        (fetch,) = plan_fetches([ref])
        data = store.get(fetch.key)
        check_object(fetch, data)
        yield bytes(chunk_of(fetch, data, ref))


@dataclass(slots=True)
class _Run:
    """The state one ``fetch_objects`` call shares with its workers."""

    budget: int
    stats: FetchStats = field(default_factory=FetchStats)
    room: threading.Condition = field(default_factory=threading.Condition)
    in_flight: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None

    def reserve(self, size: int) -> bool:
        """Room for ``size`` more bytes (waits for it); False when the run stopped."""
        with self.room:
            # Bounded: every reservation is released by its worker, done or failed, and
            # a failure notifies.
            while self.in_flight and self.in_flight + size > self.budget:
                if self.stop.is_set():
                    return False
                self.room.wait()
            if self.stop.is_set():
                return False
            self.in_flight += size
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.in_flight)
            return True

    def release(self, size: int) -> None:
        with self.room:
            self.in_flight -= size
            self.room.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.room:
            if self.failure is None:
                self.failure = error
            self.stop.set()
            self.room.notify_all()


def _fetch_one(
    store: Store,
    fetch: ObjectFetch,
    deliver: Deliver,
    run: _Run,
    on_problem: OnProblem | None,
    on_fetch: OnFetch | None,
    reserved: int,
) -> None:
    try:
        if run.stop.is_set():
            return
        if on_fetch is not None:
            on_fetch(fetch.key)
        try:
            data = store.get(fetch.key)
            with run.room:
                run.stats.objects_read += 1
                run.stats.bytes_read += len(data)
            if fetch.whole:
                check_object(fetch, data)
            for ref in fetch.chunks:
                if run.stop.is_set():
                    return
                deliver(ref, chunk_of(fetch, data, ref))
        except SnapshotError as error:
            if on_problem is None:
                raise
            on_problem(fetch, error)
    except BaseException as error:
        run.fail(error)
    finally:
        run.release(reserved)


def fetch_objects(
    store: Store,
    fetches: Iterable[ObjectFetch],
    deliver: Deliver,
    *,
    concurrency: int,
    budget: int = DEFAULT_BUDGET,
    on_problem: OnProblem | None = None,
    on_fetch: OnFetch | None = None,
) -> FetchStats:
    """Fetch, check and deliver every chunk of ``fetches`` (above); the first failure (any,
    or with ``on_problem`` any but a SnapshotError) raised once every worker stopped."""
    run = _Run(budget=max(budget, 1))
    pending: set[Future[None]] = set()
    threads = max(1, concurrency)
    with (
        # No page fault per byte received, when few threads (hakit.snapshot.heap).
        reusing_large_buffers() if reuses_buffers(threads) else contextlib.nullcontext(),
        ThreadPoolExecutor(threads, thread_name_prefix="snapshot-read") as pool,
    ):
        try:
            for fetch in fetches:
                reserved = min(fetch.size, run.budget)  # a bigger one alone: it must go
                if not run.reserve(reserved):
                    break
                pending.add(
                    pool.submit(
                        _fetch_one, store, fetch, deliver, run, on_problem, on_fetch, reserved
                    )
                )
                if len(pending) > 4 * max(1, concurrency):  # forget finished futures
                    pending = wait(pending, timeout=0, return_when=FIRST_COMPLETED).not_done
        except BaseException as error:  # an interrupt of this thread: the workers stop too
            run.fail(error)
            raise
        finally:
            wait(pending)  # no worker writes anything once this returns
    if run.failure is not None:
        raise run.failure
    return run.stats
