"""A write-only node reads the trees of the directories that changed from its local copies
(it may not GET them), keeps only the newest generation's, and without a copy reads the
directory's files again: slower, never wrong."""

from __future__ import annotations

import time
from pathlib import Path

from hakit.backup.stores import s3_client, s3_store
from hakit.backup.target import S3Target, resolve_target
from hakit.config import load_config
from hakit.snapshot.capture import CaptureOptions, CaptureReport, create_snapshot
from hakit.snapshot.format import tree_key
from hakit.snapshot.hashcache import RACY_NS
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.s3store import TREE_COPIES, S3Store
from tests.integration.backup.conftest import Site, env, make_site
from tests.integration.snapshot.conftest import LIMITS, tree_of
from tests.support.s3servers import S3Server


def _store(site: Site, *, reading: bool = False) -> S3Store:
    target = resolve_target(load_config(site.config))
    assert isinstance(target, S3Target)
    return s3_store(target, s3_client(target, env()), reading=reading)


def _backup(site: Site) -> CaptureReport:
    store = _store(site)
    assert store.write_only
    cfg = load_config(site.config)
    try:
        return create_snapshot(
            store,
            CaptureOptions(home=cfg.app.home, database_url=cfg.app.database_url, limits=LIMITS),
        )
    finally:
        store.close()


def _copies(site: Site) -> set[str]:
    state = _store(site).state
    return {
        path.relative_to(state).as_posix()
        for path in (state / TREE_COPIES).glob("*/*")
        if path.is_file()
    }


def _settle() -> None:
    time.sleep(RACY_NS / 1e9 + 0.1)  # past the racy window: the stats are trusted


def test_a_write_only_node_reads_changed_trees_from_its_copies(
    tmp_path: Path, moto: S3Server
) -> None:
    site = make_site(tmp_path, moto)
    site.configure(write_only=True)
    _settle()
    first = _backup(site)
    assert _copies(site) == {tree_key(tree.pack) for tree in first.header.trees}
    _settle()

    (site.home / "attachments" / "a003").write_bytes(b"changed")
    _settle()  # its part's tree is then trusted by the third backup (not racily clean)
    second = _backup(site)
    assert second.walked.trees_read == 1  # a003's part's, from its copy: no GET allowed
    assert second.walked.files_read == 1
    # Only the newest generation's tree packs are kept.
    assert _copies(site) == {tree_key(tree.pack) for tree in second.header.trees}

    # Without the copies: the files of the changed part are read again, all of them.
    for copy in _copies(site):
        (_store(site).state / copy).unlink()
    _settle()
    (site.home / "attachments" / "a004").write_bytes(b"changed too")
    third = _backup(site)
    assert third.walked.trees_read == 0
    before = {tree.hash for tree in second.header.trees}
    (written,) = [tree for tree in third.header.trees if tree.hash not in before]
    assert written.path == "attachments" and written.files > 1
    assert third.walked.files_read == written.files

    reader = _store(site, reading=True)
    try:
        restored = restore_generation(reader, third.header.generation, tmp_path / "restored")
    finally:
        reader.close()
    home = tree_of(site.home)
    home.pop("filestore-config.xml", None)
    got = tree_of(restored.into / "home")
    got.pop("filestore-config.xml", None)
    assert got == home
