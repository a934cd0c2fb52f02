"""The home walk: every directory, file and symlink of the home as entries, in capture order.

Directories are walked in sorted order, each from its listing (hakit.snapshot.scan:
its children, their parts and each part's stats digest, made ahead of the walk by
a helper process, hakit.snapshot.scanahead); a git directory met on the way is
captured refs-before-objects (hakit.snapshot.gitrepo). A part whose children's
stats are those one of its directory's previous trees recorded is reused whole
(``reused``): no entry is made for its children. Otherwise a file is taken from
the hash cache when its stat matches the previous generation's, or read with
hakit.snapshot.reading (a stability check, bounded retries). Entries
hold chunk hashes only; the caller resolves them to locations once packs are
sealed. Inside a git directory nothing is reused whole: its object files are
hard-link pins, whose ctime moves at every capture.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from hakit.snapshot import gitrepo
from hakit.snapshot.format import DIRECTORY, FILE, SYMLINK, Limits, TreeRef
from hakit.snapshot.hashcache import HashCache
from hakit.snapshot.reading import AddBlob, OnRead, read_stable
from hakit.snapshot.scanahead import HomeScan
from hakit.snapshot.trees import RawEntry

PIN_DIRECTORY = ".hakit-snapshot-pins"  # in the home (hard links need its file system)


class WalkedEntry(NamedTuple):  # a tuple: one is made per path of the home, every capture
    path: str
    type: str
    st: os.stat_result
    chunks: tuple[tuple[str, int], ...] = ()  # (hash, size) of each chunk read
    target: str = ""
    previous: RawEntry | None = None  # the hash cache's entry: its chunks (none read) reused
    part: int = 0  # which part of its directory's entries it is in (hakit.snapshot.trees)


@dataclass(slots=True)
class WalkStats:
    files_read: int = 0
    files_cached: int = 0
    trees_reused: int = 0  # directories unchanged: their previous trees, not read
    trees_read: int = 0  # previous trees read (directories that changed)
    bytes_read: int = 0
    rereads: int = 0
    listed_ahead: int = 0  # directories listed by the scan helper (hakit.snapshot.scanahead)
    listed_here: int = 0  # directories the walk listed itself
    git_repositories: list[str] = field(default_factory=list)


class HomeWalk:
    def __init__(
        self,
        home: Path,
        add: AddBlob,
        cache: HashCache,
        limits: Limits,
        *,
        retries: int = 5,
        on_read: OnRead | None = None,
        exclude: frozenset[str] = frozenset(),
        scan: HomeScan | None = None,
    ) -> None:
        self.home = home
        self.exclude = exclude  # relative paths left out (a backup directory inside the home)
        self.add = add
        self.cache = cache
        self.limits = limits
        self.retries = retries
        self.on_read = on_read
        self.entries: list[WalkedEntry] = []  # of the directories not reused
        self.reused: list[tuple[int, TreeRef]] = []  # parts unchanged: (part, previous tree)
        self.stats = WalkStats()
        self.pins = home / PIN_DIRECTORY
        # The listings: a capture's from its helper process (hakit.snapshot.scanahead).
        self.scan = (
            scan if scan is not None else HomeScan(str(home), PIN_DIRECTORY, exclude, helper=False)
        )

    def run(self) -> list[WalkedEntry]:
        self.scan.begin()  # the database is captured: the helper may list the home now
        gitrepo.remove_pins(self.pins)  # a crashed capture's
        try:
            self._directory(str(self.home), "")
        finally:
            gitrepo.remove_pins(self.pins)
        self.stats.trees_reused = len(self.reused)
        self.stats.trees_read = self.cache.trees_read
        self.stats.listed_ahead = self.scan.listed_ahead
        self.stats.listed_here = self.scan.listed_here
        return self.entries

    # Paths are plain strings here: the walk visits every file of the home on every
    # capture, and pathlib's objects cost more than the lstat itself.

    def _directory(self, path: str, relative: str) -> None:
        """The entries of ``path``'s children (its own is its parent's), from its listing.

        A part whose stats digest to one of the directory's previous trees is that tree,
        reused whole: no entry of it is made, only its subdirectories are walked. Every
        part is asked before any file is: the hash cache then reads only the previous
        trees not reused (hakit.snapshot.hashcache). The other parts' children are
        lstat'ed again here, and taken as they are now."""
        listing = self.scan.listing(path, relative)
        if listing.git:
            self._git_directory(Path(path), relative)
            return
        prefix = f"{relative}/" if relative else ""
        names, kinds = listing.names, listing.kinds
        reused = [self.cache.unchanged(relative, digest) for digest in listing.digests]
        start = 0
        for part, (end, tree) in enumerate(zip(listing.ends, reused, strict=True)):
            if tree is None:
                for name in names[start:end]:
                    self._path(f"{path}/{name}", prefix + name, part=part)
            else:
                self.reused.append((part, tree))
                self.stats.files_cached += tree.files  # its entries are these children's
                index = kinds.find(DIRECTORY, start, end)
                while index >= 0:
                    name = names[index]
                    self._directory(f"{path}/{name}", prefix + name)
                    index = kinds.find(DIRECTORY, index + 1, end)
            start = end

    def _git_tree(self, path: str, relative: str) -> None:
        """The entries of a directory inside a git directory: nothing reused whole."""
        try:
            names = sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return  # removed meanwhile
        for name in names:
            child = _relative(relative, name)
            if not gitrepo.skipped(name) and not (self.exclude and child in self.exclude):
                self._path(f"{path}/{name}", child, git=True)

    def _path(
        self,
        path: str,
        relative: str,
        git: bool = False,
        trust_ctime: bool = True,
        part: int = 0,
    ) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._file(path, relative, st, trust_ctime, part)
        elif stat.S_ISDIR(mode):
            self.entries.append(WalkedEntry(relative, DIRECTORY, st, part=part))
            if git:
                self._git_tree(path, relative)
            else:
                self._directory(path, relative)
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except FileNotFoundError:
                return
            self.entries.append(WalkedEntry(relative, SYMLINK, st, target=target, part=part))
        # sockets, FIFOs, devices: not an app's data; left out

    def _file(
        self, path: str, relative: str, st: os.stat_result, trust_ctime: bool, part: int = 0
    ) -> None:
        previous = self.cache.entry(relative, st, trust_ctime)
        if previous is not None:
            self.stats.files_cached += 1
            self.entries.append(WalkedEntry(relative, FILE, st, (), "", previous, part))
            return
        read = read_stable(
            Path(path),
            chunk_size=self.limits.chunk_size,
            small_file=self.limits.small_file,
            add=self.add,
            retries=self.retries,
            on_read=self.on_read,
            trust_ctime=trust_ctime,
        )
        if read is None:
            return  # vanished
        self.stats.files_read += 1
        self.stats.bytes_read += read.st.st_size
        self.stats.rereads += read.attempts - 1
        self.entries.append(WalkedEntry(relative, FILE, read.st, read.chunks, part=part))

    def _git_directory(self, path: Path, relative: str) -> None:
        self.stats.git_repositories.append(relative or ".")
        for name in gitrepo.REF_PARTS:
            self._path(str(path / name), _relative(relative, name), git=True)
        # Everything else that can name objects (the index, reflogs in logs/, ORIG_HEAD,
        # FETCH_HEAD...) before the objects too: read after the pin, an index or a reflog
        # written meanwhile names blobs and commits the pinned set lacks (seen: a restored
        # checkout failing `git fsck --full` after a `git add` and commit during capture).
        for name in sorted(os.listdir(path)):
            if name in gitrepo.REF_PARTS or name == "objects" or gitrepo.skipped(name):
                continue
            self._path(str(path / name), _relative(relative, name), git=True)
        objects_relative = _relative(relative, "objects")
        pins = self.pins / f"{len(self.stats.git_repositories)}"
        names = gitrepo.pin_objects(path, pins)
        objects_st = os.lstat(path / "objects")
        self.entries.append(WalkedEntry(objects_relative, DIRECTORY, objects_st))
        directories = sorted({name.rpartition("/")[0] for name in names} | {"pack", "info"})
        for directory in directories:
            self.entries.append(
                WalkedEntry(f"{objects_relative}/{directory}", DIRECTORY, objects_st)
            )
        for name in names:
            # Pinned links: git never rewrites an object file, so its ctime (which
            # the link moved) is not compared by the hash cache.
            self._pinned(pins / name, f"{objects_relative}/{name}")
        gitrepo.remove_pins(pins)

    def _pinned(self, path: Path, relative: str) -> None:
        st = os.lstat(path)
        self._file(str(path), relative, st, trust_ctime=False)


def _relative(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
