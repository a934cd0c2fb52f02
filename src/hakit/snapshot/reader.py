"""Reading a generation's bytes back, every object and every chunk checked against its hash."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from hakit.snapshot.format import ChunkRef, SnapshotError, object_key
from hakit.snapshot.store import Store

PACKS_KEPT = 4  # packs are read in the order they were written: a few suffice


class ObjectReader:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._packs: OrderedDict[str, bytes] = OrderedDict()
        self.objects_read = 0
        self.bytes_read = 0

    def _object(self, key: str, digest: str) -> bytes:
        data = self.store.get(key)
        self.objects_read += 1
        self.bytes_read += len(data)
        if hashlib.sha256(data).hexdigest() != digest:
            raise SnapshotError(f"object {key} is corrupt: its SHA-256 is not its name")
        return data

    def _pack(self, pack: str) -> bytes:
        if pack in self._packs:
            self._packs.move_to_end(pack)
            return self._packs[pack]
        data = self._object(object_key(ChunkRef("", 0, pack)), pack)
        self._packs[pack] = data
        if len(self._packs) > PACKS_KEPT:
            self._packs.popitem(last=False)
        return data

    def chunk(self, ref: ChunkRef) -> bytes:
        if ref.pack is None:
            data = self._object(object_key(ref), ref.hash)
        else:
            data = self._pack(ref.pack)[ref.offset : ref.offset + ref.size]
            if hashlib.sha256(data).hexdigest() != ref.hash:
                raise SnapshotError(
                    f"blob {ref.hash} in pack {ref.pack} at offset {ref.offset} is corrupt"
                )
        if len(data) != ref.size:
            raise SnapshotError(f"blob {ref.hash} has {len(data)} bytes, expected {ref.size}")
        return data
