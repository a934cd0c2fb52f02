"""A local capture's writes in the background: the manifest only once every object it
names is in place, a failed write leaves no generation, memory in flight bounded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import blob_key, decode_manifest, object_key
from hakit.snapshot.store import LocalStore
from hakit.snapshot.verify import verify_generation
from tests.integration.snapshot.conftest import LIMITS, object_files

Site = tuple[Path, Path, Path]


def _options(home: Path, database: Path) -> CaptureOptions:
    return CaptureOptions(home=home, database_url=f"sqlite:///{database}", limits=LIMITS)


class ManifestWitness(LocalStore):
    """A local repository that, as each manifest is written, records which of the
    objects it names were not yet at their names on disk (a real LocalStore; only the
    observation is added)."""

    missing_at_manifest: list[str]

    def _write(self, path: Path, data: bytes) -> bool:
        if path.parent.name == "manifests":
            manifest = decode_manifest(data)
            self.missing_at_manifest = [
                key
                for key in {object_key(ref) for ref in manifest.chunk_refs()}
                if not (self.root / key).is_file()
            ]
        return super()._write(path, data)


def test_the_manifest_is_written_after_every_object_it_names(site: Site) -> None:
    home, database, repo = site
    for index in range(6):  # many chunks: writes still queued while the walk goes on
        (home / f"large-{index}.bin").write_bytes(os.urandom(1024 * 1024))
    store = ManifestWitness(repo, max_in_flight=256 * 1024).create()
    report = create_snapshot(store, _options(home, database))
    assert store.missing_at_manifest == []
    assert report.written.blobs_written > 6 * 16  # 64 KiB chunks of the large files
    assert os.listdir(repo / "tmp") == []
    assert verify_generation(store, report.manifest.generation).ok
    # Outside a capture a put is durable at once, as before.
    assert store.put_if_absent(blob_key("ab" * 32), b"x") and (repo / blob_key("ab" * 32)).exists()


def test_a_failed_background_write_leaves_no_generation(site: Site) -> None:
    home, database, repo = site
    data = os.urandom(LIMITS.chunk_size * 3)
    (home / "large.bin").write_bytes(data)
    store = LocalStore(repo).create()
    # The fan-out directory of the file's second chunk is taken by a file: its write
    # fails in a writer thread (a real OSError, as a full disk would give).
    digest = hashlib.sha256(data[LIMITS.chunk_size : 2 * LIMITS.chunk_size]).hexdigest()
    (repo / "blobs" / digest[:2]).write_bytes(b"in the way")
    with pytest.raises(OSError):
        create_snapshot(store, _options(home, database))
    assert store.list_manifests() == []
    assert os.listdir(repo / "tmp") == []
    # The failure was this capture's: once the way is clear the next one works.
    (repo / "blobs" / digest[:2]).unlink()
    report = create_snapshot(store, _options(home, database))
    assert verify_generation(store, report.manifest.generation).ok
    assert blob_key(digest) in object_files(repo)
