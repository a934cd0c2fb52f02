"""``hakit backup prune``: retention on the backup target, with prune's own credential.

The work is hakit.snapshot.prune's (mark and sweep with a grace period); this
module opens the target for it and adds what a backup repository needs on top:

- **Prune's own credential.** Capture may run with a write-only credential; prune
  needs s3:ListBucket, s3:GetObject and s3:DeleteObject. ``prune_credential``
  picks ``--access-key-env``/``--secret-key-env``, else ``[backup]
  prune_access_key_env``/``prune_secret_key_env``, else the backup credential.
- **The newest generation of every node is kept.** A write-only node cannot list
  the bucket: its next backup builds on the newest generation *it* wrote (its
  local copy of that manifest, hakit.snapshot.s3store), reusing that
  generation's objects without writing them. After a failover and back that may
  not be the repository's newest, so prune protects each node's newest
  (``newest_per_node``, pure).
- **Captures in progress** on S3 are seen by their markers (hakit.snapshot.s3store
  says why S3 needs them); old markers, older than the grace period, are swept
  here after the prune.
- **Encrypted repositories**: the objects are listed under their stored (keyed
  hash) names, which cannot be mapped back, while the manifests name logical keys.
  ``EncryptedPruning`` maps every logical key the repository's manifests reference
  to its stored name (``EncryptedStore.stored_key``) when it lists, and back when
  prune deletes. A manifest written after that listing was not mapped, but its
  objects are safe for prune's own reasons: those its capture wrote or found are
  younger than the grace or behind an open capture marker, and those it reused are
  its base's, a generation prune keeps (read before the listing).
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace

from hakit.backup.stores import close_store, open_store, unwrapped
from hakit.backup.target import BackupTarget, LocalTarget, S3Target
from hakit.snapshot.crypto import EncryptedStore
from hakit.snapshot.format import Manifest, SnapshotError
from hakit.snapshot.prune import MANIFESTS, PruneReport, prune, referenced_keys
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.s3store import CAPTURES, S3Store
from hakit.snapshot.store import LocalStore, PrunableStore, StoredObject
from hakit.snapshot.trees import load_manifest


@dataclass(frozen=True, slots=True)
class BackupPruneReport:
    prune: PruneReport
    protected: tuple[str, ...]  # each node's newest generation
    markers_removed: int
    open_captures: tuple[str, ...]  # S3 capture markers that held objects back


def prune_credential(
    target: S3Target,
    access_key_env: str | None,
    secret_key_env: str | None,
    section_keys: tuple[str | None, str | None],
) -> S3Target:
    """``target`` with prune's credential: the options, else [backup] prune_*_env, else its own."""
    if (access_key_env is None) != (secret_key_env is None):
        raise SnapshotError("--access-key-env and --secret-key-env go together; expected both")
    if access_key_env is not None:
        return replace(target, access_key_env=access_key_env, secret_key_env=secret_key_env)
    if section_keys[0] is not None:
        return replace(target, access_key_env=section_keys[0], secret_key_env=section_keys[1])
    return target


def newest_per_node(manifests: Mapping[str, Manifest]) -> set[str]:
    """The newest generation each node wrote (generation ids sort by time)."""
    newest: dict[str, str] = {}
    for generation in sorted(manifests):
        newest[manifests[generation].node] = generation
    return set(newest.values())


class EncryptedPruning:
    """An ``EncryptedStore`` as prune needs it: manifests decrypted, objects under the
    logical names the manifests reference (above)."""

    def __init__(self, store: EncryptedStore, inner: PrunableStore) -> None:
        self.store = store
        self.inner = inner
        self._stored: dict[str, str] = {}  # a key yielded by list_objects -> its stored name

    def _logical_names(self) -> dict[str, str]:
        """stored name -> logical key, for every object a manifest references now."""
        names: dict[str, str] = {}
        for generation in self.store.list_manifests():
            try:
                manifest = load_manifest(self.store, generation)
            except SnapshotError:
                if generation in self.store.list_manifests():
                    raise
                continue  # removed meanwhile
            for key in referenced_keys([manifest]):
                names[self.store.stored_key(key)] = key
        return names

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        if prefix.startswith(MANIFESTS):
            yield from self.inner.list_objects(prefix)
            return
        listed = list(self.inner.list_objects(prefix))  # first, then the manifests (above)
        names = self._logical_names()
        for item in listed:
            key = names.get(item.key, item.key)
            self._stored[key] = item.key
            yield StoredObject(key, item.size, item.modified_ns)

    def delete(self, key: str, modified_before_ns: int | None = None) -> bool:
        stored = self._stored.get(key, self.store.stored_key(key))
        return self.inner.delete(stored, modified_before_ns)

    def has(self, key: str) -> bool:
        return self.store.has(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        raise SnapshotError("pruning writes nothing")  # pragma: no cover

    def get(self, key: str) -> bytes:
        return self.store.get(key)

    def list_manifests(self) -> list[str]:
        return self.store.list_manifests()

    def put_manifest(self, generation: str, data: bytes) -> None:
        raise SnapshotError("pruning writes nothing")  # pragma: no cover


def prunable(store: object) -> PrunableStore:
    """``store`` (as ``open_store`` returns it) as prune takes it."""
    bottom = store.inner if isinstance(store, EncryptedStore) else store
    if not isinstance(bottom, LocalStore | S3Store):
        raise SnapshotError(f"cannot prune a {type(bottom).__name__}")  # pragma: no cover
    if isinstance(store, EncryptedStore):
        return EncryptedPruning(store, bottom)
    return bottom


def _manifests(store: PrunableStore) -> dict[str, Manifest]:
    found: dict[str, Manifest] = {}
    for generation in store.list_manifests():
        try:
            found[generation] = load_manifest(store, generation)
        except SnapshotError:
            if generation in store.list_manifests():
                raise
    return found


def sweep_markers(store: S3Store, cutoff_ns: int) -> int:
    """Capture markers older than ``cutoff_ns`` (done, or a capture long dead) removed."""
    removed = 0
    for item in list(store.list_objects(CAPTURES)):
        if item.modified_ns < cutoff_ns and store.delete(item.key):
            removed += 1
    return removed


def prune_backups(
    target: BackupTarget,
    policy: RetentionPolicy,
    *,
    grace: float,
    dry_run: bool = False,
    environ: Mapping[str, str] | None = None,
    extra_protected: Collection[str] = (),
    now_ns: int | None = None,
) -> BackupPruneReport:
    environ = os.environ if environ is None else environ
    if isinstance(target, LocalTarget) and not (target.directory / MANIFESTS).is_dir():
        raise SnapshotError(f"{target.directory} holds no backups (no manifests/ directory)")
    store = open_store(target, reading=True, environ=environ)
    try:
        pruning = prunable(store)
        protected = newest_per_node(_manifests(pruning)) | set(extra_protected)
        now = time.time_ns() if now_ns is None else now_ns
        report = prune(
            pruning, policy, grace=grace, protected=protected, dry_run=dry_run, now_ns=now
        )
        bottom = unwrapped(store)
        markers = 0
        captures: tuple[str, ...] = ()
        if isinstance(bottom, S3Store):
            cutoff = now - int(grace * 1e9)
            captures = tuple(bottom.open_captures(cutoff))
            if not dry_run:
                markers = sweep_markers(bottom, cutoff)
        return BackupPruneReport(report, tuple(sorted(protected)), markers, captures)
    finally:
        close_store(store)
