"""The repository format: chunk spans, keys, the manifest's codec, writer packing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from hakit.snapshot.format import (
    DIRECTORY,
    FILE,
    FORMAT_TREES,
    SYMLINK,
    ChunkRef,
    DatabaseCapture,
    Entry,
    Limits,
    Manifest,
    SnapshotError,
    TreeRef,
    blob_key,
    chunk_spans,
    decode_manifest,
    encode_manifest,
    new_generation_id,
    object_key,
    pack_key,
    tree_key,
)
from hakit.snapshot.writer import BlobWriter


def test_chunk_spans_cover_the_file_once() -> None:
    assert chunk_spans(0, 4) == []
    assert chunk_spans(4, 4) == [(0, 4)]
    assert chunk_spans(10, 4) == [(0, 4), (4, 4), (8, 2)]


def test_keys_fan_out_by_the_hash_prefix() -> None:
    digest = "ab" + "0" * 62
    assert blob_key(digest) == f"blobs/ab/{digest}"
    assert pack_key(digest) == f"packs/ab/{digest}"
    assert object_key(ChunkRef("x", 1, digest, 5)) == pack_key(digest)


def test_generation_ids_sort_by_time() -> None:
    first = new_generation_id(1_700_000_000_000_000_000)
    second = new_generation_id(1_700_000_000_000_001_000)
    assert first.startswith("20231114T221320.000000Z-")
    assert first < second


def _manifest() -> Manifest:
    return Manifest(
        generation="20240101T000000.000000Z-0011aabb",
        started_ns=1,
        finished_ns=2,
        node="a",
        epoch=7,
        home="/srv/home",
        database=DatabaseCapture(
            "sqlite", "app.db", 10, (ChunkRef("d" * 64, 10, "p" * 64, 3),), {"page_count": 2}
        ),
        entries=(
            Entry("dir", DIRECTORY, 0o755, mtime_ns=5),
            Entry(
                "dir/f",
                FILE,
                0o640,
                size=8,
                mtime_ns=6,
                inode=9,
                ctime_ns=7,
                chunks=(ChunkRef("a" * 64, 4), ChunkRef("b" * 64, 4, "c" * 64, 0)),
            ),
            Entry("link", SYMLINK, 0o777, target="dir/f"),
        ),
    )


def test_manifest_round_trips() -> None:
    manifest = _manifest()
    assert decode_manifest(encode_manifest(manifest)) == manifest
    assert encode_manifest(manifest) == encode_manifest(decode_manifest(encode_manifest(manifest)))


def test_the_manifest_is_compact_json_with_sorted_keys() -> None:
    # Dumped without sort_keys, from objects built in sorted order: the same bytes.
    data = encode_manifest(_manifest())
    assert data == json.dumps(json.loads(data), separators=(",", ":"), sort_keys=True).encode()


def test_a_tree_manifest_round_trips_without_its_entries() -> None:
    tree = TreeRef("", "c" * 64, "e" * 64, 0, 10, "d" * 32, 5, 2, 1, 3)
    manifest = replace(_manifest(), entries=(), trees=(tree,))
    data = encode_manifest(manifest)
    assert json.loads(data)["format"] == FORMAT_TREES and "entries" not in json.loads(data)
    assert data == json.dumps(json.loads(data), separators=(",", ":"), sort_keys=True).encode()
    assert decode_manifest(data) == manifest
    assert manifest.totals() == (1, 3)  # from the tree refs, no tree read
    assert manifest.object_keys()[0] == tree_key("e" * 64)  # its pack


def test_chunk_refs_list_the_database_first() -> None:
    refs = _manifest().chunk_refs()
    assert [ref.hash[0] for ref in refs] == ["d", "a", "b"]


@pytest.mark.parametrize(
    "data", [b"{", b'{"format": "other/9"}', b'{"format": "hakit-snapshot/1"}']
)
def test_a_bad_manifest_is_a_snapshot_error(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode_manifest(data)


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def has(self, key: str) -> bool:
        return key in self.objects

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if key in self.objects:
            return False
        self.objects[key] = data
        return True

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def list_manifests(self) -> list[str]:
        return []

    def put_manifest(self, generation: str, data: bytes) -> None:
        self.objects[generation] = data


def test_small_blobs_go_into_packs_large_ones_alone_and_duplicates_once() -> None:
    store = MemoryStore()
    writer = BlobWriter(store, Limits(chunk_size=8, small_file=4, pack_size=6), {})
    a = writer.add(b"aaa", True)
    b = writer.add(b"bbbb", True)  # 7 bytes pending >= 6: sealed
    again = writer.add(b"aaa", True)
    big = writer.add(b"01234567", False)
    writer.seal()
    assert again == a
    assert writer.stats.packs_written == 1
    assert writer.stats.blobs_written == 1
    assert writer.stats.blobs_reused == 1
    pack = store.objects[pack_key(writer.ref(a).pack or "")]
    assert pack == b"aaabbbb"
    assert writer.ref(b).offset == 3
    assert writer.ref(big) == ChunkRef(hashlib.sha256(b"01234567").hexdigest(), 8)
