"""Writing a generation's bytes: every blob hashed, stored once, small ones bundled into packs.

``BlobWriter.add`` returns the blob's hash at once; where it ended up (its own
blob, or a pack and an offset) is known once its pack is sealed, so the
manifest is built at the end from ``BlobWriter.ref``. Blobs already in the
repository (the previous generation's, or seen earlier in this one) are not
written again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hakit.snapshot.format import ChunkRef, Limits, SnapshotError, blob_key, pack_key
from hakit.snapshot.store import Store


@dataclass(slots=True)
class WriteStats:
    blobs_written: int = 0
    packs_written: int = 0
    bytes_written: int = 0
    blobs_reused: int = 0


class BlobWriter:
    def __init__(self, store: Store, limits: Limits, known: Mapping[str, ChunkRef]) -> None:
        self.store = store
        self.limits = limits
        # A previous tree's chunks as read ([hash, size, pack, offset]): decoded if used.
        self._locations: dict[str, ChunkRef | Sequence[Any]] = dict(known)
        self._pending: dict[str, bytes] = {}
        self._pending_size = 0
        self.stats = WriteStats()

    def know(self, chunks: Iterable[Sequence[Any]]) -> None:
        """Chunks already in the repository (a previous tree's, read late, in their JSON
        form ``[hash, size, pack, offset]``)."""
        locations = self._locations
        for chunk in chunks:
            if chunk[0] not in locations:
                locations[chunk[0]] = chunk

    def add(self, data: bytes, small: bool) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._locations or digest in self._pending:
            self.stats.blobs_reused += 1
            return digest
        if small:
            self._pending[digest] = data
            self._pending_size += len(data)
            if self._pending_size >= self.limits.pack_size:
                self.seal()
        else:
            if self.store.put_if_absent(blob_key(digest), data):
                self.stats.blobs_written += 1
                self.stats.bytes_written += len(data)
            self._locations[digest] = ChunkRef(digest, len(data))
        return digest

    def seal(self) -> None:
        """Write the pending small blobs as one pack."""
        if not self._pending:
            return
        offsets: list[tuple[str, int, int]] = []
        parts: list[bytes] = []
        offset = 0
        for digest, data in self._pending.items():
            offsets.append((digest, len(data), offset))
            parts.append(data)
            offset += len(data)
        pack = b"".join(parts)
        pack_id = hashlib.sha256(pack).hexdigest()
        if self.store.put_if_absent(pack_key(pack_id), pack):
            self.stats.packs_written += 1
            self.stats.bytes_written += len(pack)
        for digest, size, at in offsets:
            self._locations[digest] = ChunkRef(digest, size, pack_id, at)
        self._pending.clear()
        self._pending_size = 0

    def ref(self, digest: str) -> ChunkRef:
        try:
            found = self._locations[digest]
        except KeyError:
            raise SnapshotError(f"blob {digest} was never written (seal() first)") from None
        return found if isinstance(found, ChunkRef) else ChunkRef.decode(found)
