"""Pruning: the manifests a retention policy drops are deleted, then every object no
remaining manifest references (mark and sweep).

A separate operation, for a separate credential: it needs ``SupportsDelete``
(hakit.snapshot.store), which capture, verify and restore never use, so the agent's
everyday credential may be write-only.

**Safe beside a capture in progress**, without a lock file (a lock would need a
mutable object, which write-only storage cannot hold). A capture writes its
objects first and its manifest last, so while it runs the objects it needs are
referenced by no manifest yet. They are of three kinds, each kept for its own
reason:

1. objects it wrote: younger than ``grace`` (by the store's modification time),
   and the sweep never deletes an object younger than ``grace``;
2. objects it found already there (``put_if_absent`` on an existing key): the store
   refreshes their modification time (hakit.snapshot.store), so they count as young
   too; the deletion itself is conditional on the time (``delete(key,
   modified_before_ns)``), so an object refreshed after the sweep listed it stays;
3. objects it reuses without writing them: the chunks of unchanged files, taken
   from the newest generation when it started (its *base*). Prune never removes a
   generation that was the newest at any moment of the last ``grace``: every
   generation whose manifest is younger than ``grace``, and the newest older one.
   A capture that started within the last ``grace`` builds on one of those.

All three assume a capture takes less than ``grace`` (default 1 h; raise
``[snapshot] prune_grace`` when captures take longer). The sweep lists the objects
*before* it reads the manifests again, so a manifest written meanwhile is marked
too. Manifests are deleted (durably) before any object, so a crash midway leaves
only unreferenced objects, which the next prune removes; a manifest never names a
deleted object. Temporary files under ``tmp/`` older than ``grace`` (left by an
interrupted capture) are removed as well.

A pack is kept whole while any kept generation references a blob in it: no
repacking (that would rewrite objects, which write-only and object-locked storage
forbid).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from hakit.snapshot.format import Manifest, SnapshotError, manifest_key
from hakit.snapshot.retention import Decision, Generation, RetentionPolicy, choose
from hakit.snapshot.store import PrunableStore, StoredObject
from hakit.snapshot.trees import load_manifest

DEFAULT_GRACE = 3600.0  # seconds: longer than any capture is expected to take
SWEPT_PREFIXES = ("blobs/", "packs/", "trees/", "tmp/")
MANIFESTS = "manifests/"


@dataclass(frozen=True, slots=True)
class PruneReport:
    decisions: tuple[Decision, ...]  # newest first
    removed_generations: tuple[str, ...]
    removed_objects: int
    removed_bytes: int
    kept_objects: int  # referenced by a kept generation
    young_objects: int  # referenced by none, but younger than the grace period
    dry_run: bool


def in_grace(manifest_times: Mapping[str, int], now_ns: int, grace_ns: int) -> set[str]:
    """The generations that were the newest at some moment of the last ``grace_ns``:
    those whose manifest is younger, and the newest one older (a capture in progress
    may build on any of them)."""
    cutoff = now_ns - grace_ns
    young = {generation for generation, at in manifest_times.items() if at >= cutoff}
    older = [(at, generation) for generation, at in manifest_times.items() if at < cutoff]
    if older:
        young.add(max(older)[1])
    return young


def referenced_keys(manifests: Iterable[Manifest]) -> set[str]:
    """Every object the ``manifests`` (with their entries) need: trees, blobs and packs."""
    return {key for manifest in manifests for key in manifest.object_keys()}


def sweepable(
    objects: Iterable[StoredObject], referenced: Collection[str], now_ns: int, grace_ns: int
) -> tuple[list[StoredObject], int, int]:
    """(objects to delete, referenced count, unreferenced but young count)."""
    cutoff = now_ns - grace_ns
    doomed: list[StoredObject] = []
    kept = young = 0
    for item in objects:
        if item.key in referenced:
            kept += 1
        elif item.modified_ns >= cutoff:
            young += 1
        else:
            doomed.append(item)
    return doomed, kept, young


def _manifest_times(store: PrunableStore) -> dict[str, int]:
    return {
        item.key.removeprefix(MANIFESTS).removesuffix(".json"): item.modified_ns
        for item in store.list_objects(MANIFESTS)
        if item.key.endswith(".json")
    }


def _read(store: PrunableStore, generations: Iterable[str], into: dict[str, Manifest]) -> None:
    """Every manifest not read yet; one that cannot be read stops the prune (what it
    references is unknown, so nothing may be swept)."""
    for generation in generations:
        if generation in into:
            continue
        try:
            into[generation] = load_manifest(store, generation)
        except SnapshotError as error:
            if generation not in _manifest_times(store):
                continue  # deleted meanwhile (another prune)
            raise SnapshotError(
                f"generation {generation}: {error}; nothing was pruned (remove or restore "
                "that manifest first)"
            ) from None


def prune(
    store: PrunableStore,
    policy: RetentionPolicy,
    *,
    grace: float = DEFAULT_GRACE,
    protected: Collection[str] = (),
    dry_run: bool = False,
    now_ns: int | None = None,
) -> PruneReport:
    """Apply ``policy``; ``protected``: generations kept whatever the policy says (the
    base of a capture this process runs). ``dry_run``: decide and count, delete nothing."""
    if grace < 0:
        raise SnapshotError(f"the grace period must be 0 s or more, got {grace} s")
    now = time.time_ns() if now_ns is None else now_ns
    grace_ns = int(grace * 1e9)
    times = _manifest_times(store)
    manifests: dict[str, Manifest] = {}
    _read(store, times, manifests)
    shielded = in_grace(times, now, grace_ns) | set(protected)
    decisions = tuple(
        choose(
            (Generation(g, m.started_ns) for g, m in manifests.items()),
            policy,
            shielded,
        )
    )
    doomed_generations = tuple(d.generation.id for d in decisions if not d.keep)
    if dry_run:
        kept = [manifests[d.generation.id] for d in decisions if d.keep]
        objects = [item for prefix in SWEPT_PREFIXES for item in store.list_objects(prefix)]
        doomed, kept_count, young = sweepable(objects, referenced_keys(kept), now, grace_ns)
        return PruneReport(
            decisions,
            doomed_generations,
            len(doomed),
            sum(item.size for item in doomed),
            kept_count,
            young,
            dry_run=True,
        )
    for generation in doomed_generations:
        store.delete(manifest_key(generation))
        manifests.pop(generation, None)
    # Objects listed first, then the manifests read again: one written since is marked.
    objects = [item for prefix in SWEPT_PREFIXES for item in store.list_objects(prefix)]
    remaining = _manifest_times(store)
    _read(store, remaining, manifests)
    live = [manifest for generation, manifest in manifests.items() if generation in remaining]
    doomed, kept_count, young = sweepable(objects, referenced_keys(live), now, grace_ns)
    removed = removed_bytes = 0
    cutoff = now - grace_ns
    for item in doomed:
        if store.delete(item.key, modified_before_ns=cutoff):
            removed += 1
            removed_bytes += item.size
        else:
            young += 1
    return PruneReport(
        decisions, doomed_generations, removed, removed_bytes, kept_count, young, dry_run=False
    )
