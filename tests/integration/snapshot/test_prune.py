"""Prune on a real repository directory: generations dropped by the policy, their objects
swept; what kept generations share survives; a capture running meanwhile is not damaged
(the grace period, hakit.snapshot.prune)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import manifest_key
from hakit.snapshot.prune import prune
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.store import LocalStore, open_local_store
from hakit.snapshot.verify import read_manifest, verify_generation
from tests.integration.snapshot.conftest import LIMITS, object_files, tree_of

Site = tuple[Path, Path, Path]
HOUR = 3600.0


def _options(home: Path, database: Path, **more: object) -> CaptureOptions:
    return CaptureOptions(
        home=home,
        database_url=f"sqlite:///{database}",
        node="n1",
        epoch=1,
        limits=LIMITS,
        **more,  # type: ignore[arg-type]
    )


def age(repo: Path, seconds: float) -> None:
    """Every object and manifest as if written ``seconds`` ago (older than a grace period)."""
    then = time.time() - seconds
    for path in repo.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def keys_of(store: LocalStore, generation: str) -> set[str]:
    return set(read_manifest(store, generation).object_keys())


def test_prune_keeps_what_kept_generations_share(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    generations = []
    big = os.urandom(200 * 1024)  # chunked: blobs of its own, shared by every generation
    (home / "shared.bin").write_bytes(big)
    for round_ in range(4):
        (home / f"only-{round_}.bin").write_bytes(os.urandom(150 * 1024))
        if round_:
            (home / f"only-{round_ - 1}.bin").unlink()
        (home / "attachments" / "a000").write_bytes(os.urandom(500))  # a new pack each round
        generations.append(create_snapshot(store, _options(home, database)).manifest.generation)
    expected_tree = tree_of(home)
    kept_keys = keys_of(store, generations[2]) | keys_of(store, generations[3])
    dropped_only = (keys_of(store, generations[0]) | keys_of(store, generations[1])) - kept_keys
    assert dropped_only and kept_keys & keys_of(store, generations[0])  # some shared, some not
    before = object_files(repo)

    dry = prune(store, RetentionPolicy(keep_last=2), grace=0, dry_run=True)
    assert dry.removed_generations == (generations[1], generations[0])
    assert dry.removed_objects == len(dropped_only) and object_files(repo) == before

    report = prune(store, RetentionPolicy(keep_last=2), grace=0)
    assert report.removed_generations == (generations[1], generations[0])
    assert store.list_manifests() == generations[2:]
    assert report.removed_objects == len(dropped_only)
    assert object_files(repo) == before - dropped_only
    assert object_files(repo) == kept_keys
    assert report.kept_objects == len(kept_keys) and report.young_objects == 0
    for generation in generations[2:]:
        assert verify_generation(store, generation).ok
    restored = restore_generation(store, generations[3], repo.parent / "restored", [])
    assert tree_of(restored.into / "home") == expected_tree
    # Once more: nothing left to do.
    again = prune(store, RetentionPolicy(keep_last=2), grace=0)
    assert again.removed_generations == () and again.removed_objects == 0


def test_young_objects_and_generations_survive_the_grace_period(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    first = create_snapshot(store, _options(home, database)).manifest.generation
    age(repo, 2 * HOUR)
    (home / "attachments" / "a001").write_bytes(os.urandom(700))
    second = create_snapshot(store, _options(home, database)).manifest.generation
    (home / "attachments" / "a002").write_bytes(os.urandom(700))
    third = create_snapshot(store, _options(home, database)).manifest.generation
    # keep_last 1, but every generation that was the newest within the last hour stays:
    # the second and third are younger, the first was the newest an hour ago.
    report = prune(store, RetentionPolicy(keep_last=1), grace=HOUR)
    assert report.removed_generations == ()
    assert store.list_manifests() == [first, second, third]
    reasons = {d.generation.id: [str(r) for r in d.reasons] for d in report.decisions}
    assert reasons[first] == ["in use: a capture may build on it"]
    # An hour later, only keep_last counts.
    age(repo, 2 * HOUR)
    report = prune(store, RetentionPolicy(keep_last=1), grace=HOUR)
    assert report.removed_generations == (second, first)
    assert verify_generation(store, third).ok


def test_unreferenced_young_objects_and_old_temporaries(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    create_snapshot(store, _options(home, database))
    # What an interrupted capture leaves: objects no manifest names, a temporary file.
    store.put_if_absent(object_key_of(b"orphan"), b"orphan")
    (repo / "tmp" / "leftover.abc").write_bytes(b"half written")
    report = prune(store, RetentionPolicy(keep_last=1), grace=HOUR)
    assert report.young_objects == 2 and (repo / "tmp" / "leftover.abc").exists()
    os.utime(repo / "tmp" / "leftover.abc", (0, 0))
    os.utime(repo / object_key_of(b"orphan"), (0, 0))
    report = prune(store, RetentionPolicy(keep_last=1), grace=HOUR)
    assert report.removed_objects == 2
    assert not (repo / "tmp" / "leftover.abc").exists()
    assert not (repo / object_key_of(b"orphan")).exists()


def object_key_of(data: bytes) -> str:
    import hashlib

    from hakit.snapshot.format import blob_key

    return blob_key(hashlib.sha256(data).hexdigest())


def _capture_with_prune_midway(site: Site, grace: float) -> tuple[LocalStore, str, str]:
    """Generations g1 (with big.bin) and g2 (without it), both two hours old; then a
    capture with big.bin back, during which, once big.bin was read (its blobs found in
    the repository, only g1 naming them; the attachments before it were written into
    new packs), a prune keeping one generation runs. Returns (store, the capture's generation, the generation pruned)."""
    home, database, repo = site
    store = open_local_store(repo, create=True)
    big = home / "big.bin"
    content = os.urandom(300 * 1024)  # 5 chunks: blobs of their own
    big.write_bytes(content)
    g1 = create_snapshot(store, _options(home, database)).manifest.generation
    big.unlink()
    create_snapshot(store, _options(home, database))
    age(repo, 2 * HOUR)
    big.write_bytes(content)  # the same bytes again: its blobs are in the repository
    pruned: list[str] = []

    def on_read(path: Path, attempt: int) -> None:
        if path.name == "big.bin" and not pruned:
            report = prune(store, RetentionPolicy(keep_last=1), grace=grace)
            pruned.extend(report.removed_generations)

    capture = create_snapshot(store, _options(home, database, on_read=on_read))
    assert pruned == [g1]
    return store, capture.manifest.generation, g1


def test_a_capture_concurrent_with_prune_is_not_damaged(site: Site) -> None:
    home, _, repo = site
    store, generation, _ = _capture_with_prune_midway(site, grace=HOUR)
    report = verify_generation(store, generation)
    assert report.ok, report.problems
    restored = restore_generation(store, generation, repo.parent / "restored", [])
    assert tree_of(restored.into / "home") == tree_of(home)
    # Later, with the capture done, prune has nothing of it to remove.
    assert prune(store, RetentionPolicy(keep_last=1), grace=HOUR).removed_objects == 0
    assert verify_generation(store, generation).ok


def test_without_a_grace_period_the_same_prune_damages_the_capture(site: Site) -> None:
    """The counter-test: what the grace period prevents does happen without it."""
    store, generation, _ = _capture_with_prune_midway(site, grace=0)
    report = verify_generation(store, generation)
    assert not report.ok
    assert any("missing" in problem for problem in report.problems), report.problems


def test_a_manifest_that_cannot_be_read_stops_the_prune(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    create_snapshot(store, _options(home, database))
    (home / "attachments" / "a003").write_bytes(os.urandom(300))
    newest = create_snapshot(store, _options(home, database)).manifest.generation
    before = object_files(repo)
    (repo / manifest_key(newest)).write_bytes(b"{not json")
    try:
        prune(store, RetentionPolicy(keep_last=1), grace=0)
    except Exception as error:
        assert "nothing was pruned" in str(error)
    else:  # pragma: no cover
        raise AssertionError("prune went on with an unreadable manifest")
    assert object_files(repo) == before and len(store.list_manifests()) == 2


def test_an_object_refreshed_after_the_listing_is_not_deleted(tmp_path: Path) -> None:
    store = open_local_store(tmp_path / "repo", create=True)
    key = object_key_of(b"data")
    store.put_if_absent(key, b"data")
    os.utime(tmp_path / "repo" / key, (0, 0))
    cutoff = time.time_ns() - int(HOUR * 1e9)
    listed = [item for item in store.list_objects("blobs/") if item.modified_ns < cutoff]
    assert [item.key for item in listed] == [key]  # old when listed ...
    assert not store.put_if_absent(key, b"data")  # ... then a capture finds it, refreshing it
    assert not store.delete(key, modified_before_ns=cutoff)
    assert store.get(key) == b"data"
    assert not list((tmp_path / "repo" / "tmp").iterdir())  # nothing left aside
    os.utime(tmp_path / "repo" / key, (0, 0))
    assert store.delete(key, modified_before_ns=cutoff)
    assert not (tmp_path / "repo" / key).exists()
    assert not store.delete(key)  # already gone: no error
