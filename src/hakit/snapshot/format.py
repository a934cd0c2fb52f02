"""The snapshot repository format: what is stored where, and the manifest.

A repository is a set of immutable objects, each written once under a name
derived from its content, plus one manifest per generation::

    blobs/<h[:2]>/<h>        one chunk of a large file; h = SHA-256 of its bytes
    packs/<p[:2]>/<p>        small files' contents concatenated; p = SHA-256 of the pack
    trees/<t[:2]>/<t>        directories' trees concatenated; t = SHA-256 of the tree pack
    manifests/<generation>.json

- **Content addressed.** A blob's name is the SHA-256 of its bytes, a pack's the
  SHA-256 of the whole pack (a tree pack's too), so an object is
  never overwritten with other bytes: writing is "put if absent", and a reader
  checks every object against its name.
- **Chunks.** A file larger than ``Limits.chunk_size`` is cut into fixed-size
  chunks (the last one shorter), each its own blob: a change in place re-sends
  only the chunks it touched (an SQLite file, a log). Fixed, not content-defined,
  chunks: cheap to cut in Python; an insertion re-sends the rest of the file.
- **Packs.** Files no larger than ``Limits.small_file`` are bundled into packs of
  about ``Limits.pack_size``, so a generation is not one object per file; an
  entry gives each such blob's pack and offset.
- **Trees** (hakit.snapshot.trees). A manifest of ``FORMAT_TREES`` holds no
  entries: it lists the trees of each directory (``TreeRef``: its directory, its
  hash, and its pack and offset; a capture puts the trees it writes in one tree
  pack), each holding a part of the directory's entries, cut by their names; an
  unchanged part keeps its tree from one generation to the next, so an
  incremental capture neither reads nor writes its entries. Manifests of
  ``FORMAT`` (entries inline, as hakit wrote them first) are still read.
- **Manifest last.** A generation's blobs, packs and trees are written (and made
  durable) first; its manifest last, in one put (an atomic rename on a local
  directory, one PutObject on S3). A generation without a manifest is invisible:
  an interrupted capture leaves only unreferenced objects, never a half
  generation. There is no mutable index and no lock file: a repository grows by
  puts alone (write-only storage works); pruning is a separate operation.
- **Generation ids** sort by time: ``YYYYMMDDTHHMMSS.ffffffZ-<8 hex>``.

The manifest (JSON, UTF-8, ``"format"``) records the generation id, when it was
taken (``started_ns``, ``finished_ns``), the node and the epoch it was taken
under (``null`` when taken outside the agent), the database capture (``kind``
``"sqlite"`` or ``"postgresql"``, its file's name and chunks, and its
``position``: for SQLite the file change counter, page count and schema version
of the copy; for PostgreSQL the database's name, the exported snapshot's id, the
WAL position (LSN) and the server's version, see ``hakit.snapshot.postgres``)
and the home's trees: ``trees``, one ``[path, tree hash, tree pack, offset,
size, stats digest, newest file time, entries, files, bytes]`` per part of a
directory, a directory's parts in the order of their entries (``FORMAT_TREES``), or
``entries`` (``FORMAT``). An entry is one path (POSIX, relative to the home)
with its type (``f`` file, ``d`` directory, ``l`` symlink), mode, size,
``mtime_ns``, the ``inode`` and ``ctime_ns`` seen (the next capture's hash
cache) and, for a file, its chunks ``[hash, size, pack or null, offset]``; for a
symlink its target.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hakit.errors import HakitError

# The entry types are the scan's (hakit.snapshot.scan: a helper process that imports
# only the standard library digests entries' stats with them).
from hakit.snapshot.scan import DIRECTORY as DIRECTORY
from hakit.snapshot.scan import FILE as FILE
from hakit.snapshot.scan import SYMLINK as SYMLINK

FORMAT = "hakit-snapshot/1"  # the repository's; and a manifest holding its entries itself
FORMAT_TREES = "hakit-snapshot/2"  # a manifest whose entries are in tree objects
MiB = 1024 * 1024


class SnapshotError(HakitError):
    """A snapshot could not be taken, verified or restored (the message says what and why)."""


@dataclass(frozen=True, slots=True)
class Limits:
    chunk_size: int = 4 * MiB  # files above this are cut into chunks of this size
    small_file: int = 4 * MiB  # files up to one chunk go into packs: one object, not one per file
    pack_size: int = 16 * MiB  # a pack is written once it holds about this much


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One piece of a file: its hash and size; ``pack`` None when it is a blob of its own."""

    hash: str
    size: int
    pack: str | None = None
    offset: int = 0

    def encode(self) -> list[Any]:
        return [self.hash, self.size, self.pack, self.offset]

    @classmethod
    def decode(cls, raw: Sequence[Any]) -> ChunkRef:
        digest, size, pack, offset = raw
        return cls(str(digest), int(size), None if pack is None else str(pack), int(offset))


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the home's tree (POSIX, relative to the home)."""

    path: str
    type: str  # FILE, DIRECTORY or SYMLINK
    mode: int  # permission bits (S_IMODE)
    size: int = 0
    mtime_ns: int = 0
    inode: int = 0
    ctime_ns: int = 0
    chunks: tuple[ChunkRef, ...] = ()
    target: str = ""  # a symlink's

    def encode(self) -> dict[str, Any]:
        # Keys in sorted order: the manifest is dumped without sort_keys (see encode_manifest).
        if self.type == FILE:
            return {
                "chunks": [chunk.encode() for chunk in self.chunks],
                "ctime_ns": self.ctime_ns,
                "inode": self.inode,
                "mode": self.mode,
                "mtime_ns": self.mtime_ns,
                "path": self.path,
                "size": self.size,
                "type": self.type,
            }
        if self.type == DIRECTORY:
            return {
                "mode": self.mode,
                "mtime_ns": self.mtime_ns,
                "path": self.path,
                "type": self.type,
            }
        return {"mode": self.mode, "path": self.path, "target": self.target, "type": self.type}

    @classmethod
    def decode(cls, raw: Mapping[str, Any]) -> Entry:
        # Positional and without a generator per entry: a capture decodes the whole
        # previous tree each time.
        get = raw.get
        chunks = get("chunks")
        return cls(
            str(raw["path"]),
            str(raw["type"]),
            int(raw["mode"]),
            int(get("size", 0)),
            int(get("mtime_ns", 0)),
            int(get("inode", 0)),
            int(get("ctime_ns", 0)),
            tuple([ChunkRef.decode(chunk) for chunk in chunks]) if chunks else (),
            str(get("target", "")),
        )


def _scalar(value: Any) -> int | str:
    """A position's value: a number (SQLite's counters) or a string (an LSN, a snapshot id)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a database position holds {value!r}, not a number or a string")
    return value


@dataclass(frozen=True, slots=True)
class DatabaseCapture:
    kind: str  # "sqlite" or "postgresql"
    name: str  # the copy's file name (restored under database/<name>): the file, or the dump
    size: int
    chunks: tuple[ChunkRef, ...]
    position: Mapping[str, int | str] = field(default_factory=dict)

    def encode(self) -> dict[str, Any]:
        return {  # keys in sorted order (see encode_manifest)
            "chunks": [chunk.encode() for chunk in self.chunks],
            "kind": self.kind,
            "name": self.name,
            "position": dict(sorted(self.position.items())),
            "size": self.size,
        }

    @classmethod
    def decode(cls, raw: Mapping[str, Any]) -> DatabaseCapture:
        return cls(
            kind=str(raw["kind"]),
            name=str(raw["name"]),
            size=int(raw["size"]),
            chunks=tuple(ChunkRef.decode(chunk) for chunk in raw["chunks"]),
            position={str(k): _scalar(v) for k, v in raw.get("position", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class TreeRef:
    """A part of one directory's entries (all of them, in a manifest written before
    parts): a tree, stored in a tree pack (hakit.snapshot.trees)."""

    path: str  # the directory (POSIX, relative to the home; "" for the home itself)
    hash: str  # SHA-256 of the tree (its JSON)
    pack: str  # SHA-256 of the tree pack holding it
    offset: int  # where in the pack
    size: int  # its length
    digest: str  # of the entries' stats: an unchanged part is known without its tree
    newest_ns: int  # the newest mtime or ctime of its files (racily clean ones are re-read)
    count: int  # entries in the tree
    files: int  # of which regular files
    bytes: int  # their sizes' sum

    def encode(self) -> list[Any]:
        return [
            self.path,
            self.hash,
            self.pack,
            self.offset,
            self.size,
            self.digest,
            self.newest_ns,
            self.count,
            self.files,
            self.bytes,
        ]

    @classmethod
    def decode(cls, raw: Sequence[Any]) -> TreeRef:
        path, digest, pack, offset, size, stats, newest, count, files, total = raw
        return cls(
            str(path),
            str(digest),
            str(pack),
            int(offset),
            int(size),
            str(stats),
            int(newest),
            int(count),
            int(files),
            int(total),
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    generation: str
    started_ns: int
    finished_ns: int
    node: str
    epoch: int | None
    home: str  # the home's path where it was taken (informative)
    database: DatabaseCapture | None
    entries: tuple[Entry, ...]  # all of them (a tree manifest's once its trees are read)
    trees: tuple[TreeRef, ...] = ()  # a FORMAT_TREES manifest's; () for FORMAT's

    def files(self) -> dict[str, Entry]:
        return {entry.path: entry for entry in self.entries}

    def totals(self) -> tuple[int, int]:
        """(regular files, their bytes) of the home, without reading any tree."""
        if self.trees:
            return sum(t.files for t in self.trees), sum(t.bytes for t in self.trees)
        files = [entry for entry in self.entries if entry.type == FILE]
        return len(files), sum(entry.size for entry in files)

    def chunk_refs(self) -> list[ChunkRef]:
        """Every chunk the generation needs (the database's first), duplicates included."""
        refs = list(self.database.chunks) if self.database else []
        for entry in self.entries:
            refs.extend(entry.chunks)
        return refs

    def object_keys(self) -> list[str]:
        """Every object the generation needs, without repeats: its trees first."""
        keys = [tree_key(tree.pack) for tree in self.trees]
        keys.extend(object_key(ref) for ref in self.chunk_refs())
        return list(dict.fromkeys(keys))


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest's JSON: compact, keys sorted. With ``trees`` a FORMAT_TREES manifest
    (its entries are in the tree objects, written before it), else a FORMAT one."""
    # Every object is built with its keys in sorted order, which is what sort_keys would
    # give, at a quarter of the cost of sorting them again.
    document: dict[str, Any] = {
        "database": manifest.database.encode() if manifest.database else None,
    }
    if not manifest.trees:
        document["entries"] = [entry.encode() for entry in manifest.entries]
    document.update(
        {
            "epoch": manifest.epoch,
            "finished_ns": manifest.finished_ns,
            "format": FORMAT_TREES if manifest.trees else FORMAT,
            "generation": manifest.generation,
            "home": manifest.home,
            "node": manifest.node,
            "started_ns": manifest.started_ns,
        }
    )
    if manifest.trees:
        document["trees"] = [tree.encode() for tree in manifest.trees]
    return json.dumps(document, separators=(",", ":")).encode()


def decode_manifest(data: bytes) -> Manifest:
    """The manifest as stored: a FORMAT_TREES one without its entries (its ``trees`` name
    them: hakit.snapshot.trees.load_manifest reads them), a FORMAT one whole."""
    try:
        raw = json.loads(data)
        found = raw.get("format")
        if found not in (FORMAT, FORMAT_TREES):
            raise SnapshotError(f"not a {FORMAT} or {FORMAT_TREES} manifest (format {found!r})")
        manifest = Manifest(
            generation=str(raw["generation"]),
            started_ns=int(raw["started_ns"]),
            finished_ns=int(raw["finished_ns"]),
            node=str(raw["node"]),
            epoch=None if raw["epoch"] is None else int(raw["epoch"]),
            home=str(raw["home"]),
            database=DatabaseCapture.decode(raw["database"]) if raw["database"] else None,
            entries=tuple(Entry.decode(entry) for entry in raw["entries"])
            if found == FORMAT
            else (),
            trees=tuple(TreeRef.decode(tree) for tree in raw["trees"])
            if found == FORMAT_TREES
            else (),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SnapshotError(f"a manifest that cannot be read: {error!r}") from None
    return manifest


def new_generation_id(now_ns: int | None = None) -> str:
    now_ns = time.time_ns() if now_ns is None else now_ns
    seconds, rest = divmod(now_ns, 1_000_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"{stamp}.{rest // 1000:06d}Z-{secrets.token_hex(4)}"


def blob_key(digest: str) -> str:
    return f"blobs/{digest[:2]}/{digest}"


def pack_key(digest: str) -> str:
    return f"packs/{digest[:2]}/{digest}"


def tree_key(digest: str) -> str:
    return f"trees/{digest[:2]}/{digest}"


def manifest_key(generation: str) -> str:
    return f"manifests/{generation}.json"


def object_key(ref: ChunkRef) -> str:
    """Where the bytes of ``ref`` are: its own blob, or the pack holding it."""
    return blob_key(ref.hash) if ref.pack is None else pack_key(ref.pack)


def chunk_spans(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """(offset, length) of the fixed-size chunks of a file of ``size`` bytes (none when empty)."""
    return [(offset, min(chunk_size, size - offset)) for offset in range(0, size, chunk_size)]
