"""A data directory as one archive and back (hakit.snapshot.pgdatadir): the round trip with
PostgreSQL's modes, and archives that would escape the directory or hold links refused."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from hakit.snapshot.basebackup import wal_range
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.pgdatadir import pack_data_directory, unpack_data_directory

NO_SUCH_MAJOR = 99  # no pg_verifybackup of this version: the structural checks alone


def _chunks(data: bytes, size: int = 700) -> list[bytes]:
    return [data[offset : offset + size] for offset in range(0, len(data), size)]


def _fake_data_directory(root: Path) -> None:
    (root / "global").mkdir(parents=True)
    (root / "base" / "1").mkdir(parents=True)
    (root / "pg_wal").mkdir()
    (root / "PG_VERSION").write_text("15\n")
    (root / "backup_label").write_text("START WAL LOCATION: 0/2000028\n")
    (root / "global" / "pg_control").write_bytes(bytes(range(256)) * 32)
    (root / "base" / "1" / "1259").write_bytes(b"\x01" * 20_000)


def test_round_trip_keeps_every_byte_with_private_modes(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _fake_data_directory(source)
    archive = tmp_path / "pgdata"
    pack_data_directory(source, archive)
    restored = tmp_path / "restored"
    read = unpack_data_directory(_chunks(archive.read_bytes()), restored, NO_SUCH_MAJOR)
    assert read == archive.stat().st_size  # every chunk read: every hash checked
    for path in source.rglob("*"):
        copy = restored / path.relative_to(source)
        if path.is_file():
            assert copy.read_bytes() == path.read_bytes()
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        else:
            assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700
    with pytest.raises(SnapshotError, match="exists: a data directory is restored into a new"):
        unpack_data_directory(_chunks(archive.read_bytes()), restored, NO_SUCH_MAJOR)


def _archive(*members: tuple[str, bytes | None, bytes]) -> bytes:
    """A tar of (name, file contents or None, kind) members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc"
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))
    return out.getvalue()


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (_archive(("../outside", b"x", tarfile.REGTYPE)), "unsafe path '../outside'"),
        (_archive(("/etc/passwd", b"x", tarfile.REGTYPE)), "unsafe path '/etc/passwd'"),
        (_archive(("pg_tblspc", None, tarfile.SYMTYPE)), "neither a file nor a directory"),
        (_archive(("PG_VERSION", b"15\n", tarfile.REGTYPE)), "is not a base backup: it has no"),
    ],
    ids=["parent", "absolute", "symlink", "not-a-base-backup"],
)
def test_archives_that_are_not_a_plain_data_directory_are_refused(
    tmp_path: Path, archive: bytes, message: str
) -> None:
    with pytest.raises(SnapshotError, match=message):
        unpack_data_directory(_chunks(archive), tmp_path / "restored", NO_SUCH_MAJOR)
    assert not (tmp_path / "outside").exists() and not Path("/outside").exists()


def test_the_wal_range_is_read_from_the_backup_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "backup_manifest"
    manifest.write_text(
        '{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [], "WAL-Ranges": ['
        '{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}'
    )
    assert wal_range(manifest) == ("0/2000028", "0/2000100", 1)
    manifest.write_text("{}")
    with pytest.raises(SnapshotError, match="backup_manifest cannot be read"):
        wal_range(manifest)
