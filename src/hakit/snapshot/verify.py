"""``verify``: re-read and re-hash every object a generation needs; every problem listed."""

from __future__ import annotations

from dataclasses import dataclass

from hakit.snapshot.format import Manifest, SnapshotError, decode_manifest, manifest_key
from hakit.snapshot.reader import ObjectReader
from hakit.snapshot.store import Store


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
    return decode_manifest(store.get(manifest_key(generation)))


def verify_generation(store: Store, generation: str | None = None) -> VerifyReport:
    manifest = read_manifest(store, generation)
    reader = ObjectReader(store)
    problems: list[str] = []
    seen: set[str] = set()
    for ref in manifest.chunk_refs():
        if ref.hash in seen:
            continue
        seen.add(ref.hash)
        try:
            reader.chunk(ref)
        except SnapshotError as error:
            problem = str(error)
            if problem not in problems:
                problems.append(problem)
    return VerifyReport(
        manifest.generation, len(seen), reader.objects_read, reader.bytes_read, tuple(problems)
    )
