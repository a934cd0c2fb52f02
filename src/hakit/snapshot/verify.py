"""``verify``: re-read and re-hash every object a generation needs; every problem listed.

The objects are fetched as a restore fetches them (hakit.snapshot.reader: each
once, concurrently, in bounded memory); one problem per object that is missing
or corrupt, and every other object still checked."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from hakit.snapshot.format import Manifest, SnapshotError
from hakit.snapshot.reader import (
    ObjectFetch,
    OnFetch,
    fetch_objects,
    plan_fetches,
    read_concurrency,
)
from hakit.snapshot.store import Store
from hakit.snapshot.trees import load_manifest


@dataclass(frozen=True, slots=True)
class VerifyReport:
    generation: str
    chunks: int
    objects: int
    bytes: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def read_manifest(store: Store, generation: str | None) -> Manifest:
    """The named generation's manifest, or the newest one's when ``generation`` is None."""
    generations = store.list_manifests()
    if not generations:
        raise SnapshotError("the repository holds no generation")
    if generation is None:
        generation = generations[-1]
    elif generation not in generations:
        raise SnapshotError(
            f"no generation {generation} in the repository (newest: {generations[-1]})"
        )
    return load_manifest(store, generation)


def verify_generation(
    store: Store,
    generation: str | None = None,
    *,
    concurrency: int | None = None,
    on_fetch: OnFetch | None = None,
) -> VerifyReport:
    """Every object the generation needs fetched once, concurrently (``concurrency`` None:
    the store's), and checked with every chunk in it; each object's problem listed."""
    manifest = read_manifest(store, generation)
    refs = manifest.chunk_refs()
    problems: list[str] = []
    lock = threading.Lock()

    def problem(_fetch: ObjectFetch, error: SnapshotError) -> None:
        with lock:
            if str(error) not in problems:
                problems.append(str(error))

    stats = fetch_objects(
        store,
        plan_fetches(refs),
        lambda _ref, _data: None,
        concurrency=read_concurrency(store) if concurrency is None else concurrency,
        on_problem=problem,
        on_fetch=on_fetch,
    )
    return VerifyReport(
        manifest.generation,
        len({ref.hash for ref in refs}),
        stats.objects_read,
        stats.bytes_read,
        tuple(problems),
    )
