"""A repository in an S3 bucket (boto3): puts only, concurrent, write-only capable.

Every object goes under ``<prefix>/`` with the format's keys (hakit.snapshot.format).

- **Never an overwrite.** Each put carries ``If-None-Match: *``: a key that
  exists answers 412 and is left as it is (counted as present). Content-addressed
  objects and one new manifest key per generation mean normal operation neither
  overwrites nor deletes, so bucket versioning and Object Lock change nothing.
  Not every S3 store honours the header: ``rclone serve s3`` (1.75) ignores it
  and overwrites, some answer ``NotImplemented``. So each writing instance
  **probes** with its first put: its capture marker (below, a fresh key) is put
  conditionally twice, and the second must answer 412. A store that does not
  (``conditional`` False) gets a HEAD before each put instead, and an existing
  key is counted present, not written (the window between the HEAD and the put
  is one request, with a single writer and content-addressed or fresh keys);
  a write-only credential cannot HEAD, so there the backup is refused with an
  error saying why, rather than overwriting blindly (the crypto ``config`` of a
  node holding a wrong key, say, would replace the right one).
- **Concurrent.** ``put_if_absent`` hands the object to a pool of
  ``max_concurrency`` threads and returns; objects above ``multipart_threshold``
  go up as multipart uploads whose parts run concurrently too (the default
  threshold is above any object a capture writes with the default limits: a
  part is a copy of its slice). Bytes in flight are bounded (``max_in_flight``),
  and freed buffers go back to the system (hakit.snapshot.heap), so memory stays
  flat whatever the home's size.
  ``put_manifest`` first waits for every upload; any failure raises there (and at
  the next put), so a generation whose objects are not all stored never gets its
  manifest: an interrupted backup leaves no visible generation. No transfer
  manager is used: s3transfer does not pass ``If-None-Match``, and its CRT variant
  ignores custom endpoints.
- **A local record of stored keys** (``keys``, one per line, appended and fsynced
  after each successful put, in ``state``) spares re-sending what an earlier,
  interrupted backup stored. In write-only mode it is the only source:
  ``has`` and ``list_manifests`` read it and the newest manifest's local copy
  (``manifests/``), never the bucket. With read access, a missing record is
  rebuilt from a LIST (``rebuild_record``); without, it starts empty and the 412s
  refill it. The record is no proof that an object is still there (a prune may
  have removed it since), so a put is skipped only for keys this instance stored
  or was answered 412 for; any other key is put conditionally (a 412 costs the
  bytes sent, never an overwrite).
- **Pruning** (``SupportsDelete``: ``list_objects``, ``delete``), for a separate,
  more privileged credential (hakit.backup.prune). prune's grace period relies on
  ``put_if_absent`` refreshing an existing object's time (hakit.snapshot.prune,
  case 2), which S3 cannot do here: a conditional put answered 412 leaves
  ``LastModified`` as it was, and refreshing it (a copy onto itself or a second,
  unconditional put) would need read access or overwrite the object, which the
  write-only and versioned design excludes. So captures announce themselves
  instead (**capture markers**): before its first object, a writing instance puts
  ``captures/<time>-<random>`` (a new key each time: put-only, write-only
  capable), and after its manifest ``captures/<same>.done``. A marker younger
  than the grace period without its ``.done`` is a capture that may rely on any
  existing object, and ``delete(key, modified_before_ns)`` then deletes nothing:
  per object, HEAD (its ``LastModified`` must be older than the cutoff), LIST
  ``captures/`` (no open capture since the cutoff), DeleteObject. A capture that
  starts after that LIST writes its marker and then finds the object either still
  there or gone (then puts it again, a 200): the window is the one DeleteObject
  request, as ``SupportsDelete`` allows. A capture killed before its ``.done``
  holds prunes off for one grace period. With **versioning** on, DeleteObject
  only adds a delete marker: the bytes stay, as a noncurrent version, until a
  lifecycle rule (``NoncurrentVersionExpiration``) expires them (and until then a
  wrong prune can be undone by removing the delete marker).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.snapshot.format import MiB, SnapshotError, manifest_key
from hakit.snapshot.heap import return_large_buffers
from hakit.snapshot.s3record import RECORD, KeyRecord
from hakit.snapshot.store import StoredObject

log = logging.getLogger(__name__)

MANIFEST_COPIES = "manifests"
CAPTURES = "captures/"  # the capture markers (above)
DONE = ".done"
MARKED_PREFIXES = ("blobs/", "packs/", "trees/")  # a put there is a capture's: marked first
TREE_COPIES = "trees/"  # local copies of the trees put (below)
MISSING = ("404", "NoSuchKey", "NotFound")
PRECONDITION = ("PreconditionFailed", "412")  # If-None-Match: the key exists


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # without a trailing "/"
    max_concurrency: int = 100
    # Above the largest object a capture writes with the default limits (a pack:
    # Limits.pack_size plus one small file), so each goes up in one PutObject: the
    # parts of a multipart upload are copies of the object (peak RSS), and more requests.
    multipart_threshold: int = 32 * MiB
    part_size: int = 8 * MiB
    max_in_flight: int = 64 * MiB  # bytes handed to the pool and not yet stored (peak RSS < 300 MB)

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


def error_code(error: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for any other error)."""
    response: Any = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code", "")
        return str(code)
    return ""


def is_denied(error: BaseException) -> bool:
    return error_code(error) in ("AccessDenied", "403", "AllAccessDisabled")


def describe(error: BaseException) -> str:
    code = error_code(error)
    if is_denied(error):
        return f"access denied ({code})"
    return f"{code}: {error}" if code else f"{type(error).__name__}: {error}"


@dataclass(slots=True)
class S3Stats:
    objects_put: int = 0  # PutObject or completed multipart uploads that stored an object
    objects_present: int = 0  # answered 412: already there
    parts_put: int = 0
    bytes_put: int = 0


class S3Store:
    def __init__(
        self, client: Any, location: S3Location, state: Path, *, write_only: bool = False
    ) -> None:
        return_large_buffers()  # peak RSS (hakit.snapshot.heap)
        self.client = client
        self.location = location
        self.state = state
        self.write_only = write_only
        self.stats = S3Stats()
        self._stats_lock = threading.Lock()
        workers = max(1, location.max_concurrency)
        self._objects = ThreadPoolExecutor(workers, thread_name_prefix="s3-put")
        self._parts = ThreadPoolExecutor(workers, thread_name_prefix="s3-part")
        self._pending: list[Future[None]] = []
        self._room = threading.Condition()
        self._in_flight = 0
        self._failure: BaseException | None = None
        # Whether the store honours If-None-Match (None: not probed yet; above).
        self.conditional: bool | None = None
        state.mkdir(parents=True, exist_ok=True)
        # A missing record is rebuilt before the first put, when the credential may list.
        self._rebuild = not write_only and not (state / RECORD).exists()
        self.record = KeyRecord(state)
        self._confirmed: set[str] = set()  # stored, or answered 412, by this instance
        self._confirmed_lock = threading.Lock()
        self.marker: str | None = None  # this instance's capture marker, once written
        self._marker_lock = threading.Lock()
        self._capture_seen_ns: int | None = None  # delete(): an open capture found
        self._warned = False  # the store's lack of conditional writes, logged once

    @property
    def read_concurrency(self) -> int:
        """Objects a restore or verify fetches at once (hakit.snapshot.reader): as many as
        uploads, the client's connection pool's size."""
        return max(1, self.location.max_concurrency)

    # --- the record ------------------------------------------------------------

    def rebuild_record(self) -> int:
        """The record from a LIST of the repository (needs s3:ListBucket); its size."""
        prefix = self.location.key("")
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
                keys.extend(item["Key"][len(prefix) :] for item in page.get("Contents", ()))
        except Exception as error:
            raise self._error("list", prefix, error) from None
        self.record.replace(keys)
        self._rebuild = False
        return len(keys)

    def _ensure_record(self) -> None:
        if self._rebuild:
            self.rebuild_record()

    # --- the Store protocol ----------------------------------------------------

    def has(self, key: str) -> bool:
        if key in self.record or self.write_only:
            return key in self.record
        return self._exists(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Queued for upload unless the record has it: True when queued (sent)."""
        self._raise_failure()
        if key.startswith(TREE_COPIES):
            self._copy_tree(key, data)
        self._ensure_record()
        if key in self._confirmed:
            return False
        if key.startswith(MARKED_PREFIXES) or self.conditional is None:
            self._mark_capture()  # and the probe, before this instance's first put
        size = len(data)
        with self._room:
            while self._in_flight and self._in_flight + size > self.location.max_in_flight:
                self._room.wait()
            self._in_flight += size
        self._pending.append(self._objects.submit(self._upload, key, data))
        self._pending = [future for future in self._pending if not future.done()]
        return True

    def _copy_tree(self, key: str, data: bytes) -> None:
        """Keep a local copy of a tree pack put: the next capture reads the trees of the
        directories that changed (hakit.snapshot.hashcache), which a write-only
        credential cannot GET. A cache: not fsynced, checked by its reader when read;
        ``retain_tree_copies`` drops those the newest generation does not use."""
        copy = self.state / key
        try:
            if copy.exists():
                return
            copy.parent.mkdir(parents=True, exist_ok=True)
            scratch = copy.with_name(f"{copy.name}.{secrets.token_hex(4)}.new")
            scratch.write_bytes(data)
            os.replace(scratch, copy)
        except OSError as error:  # only a cache: the capture goes on without it
            log.warning("could not keep a local copy of %s: %s", key, error)

    def _tree_copy(self, key: str) -> bytes:
        """The local copy of tree pack ``key`` (checked by its reader: each tree's hash, or
        the encryption's authentication under an encrypted repository's keyed names)."""
        try:
            return (self.state / key).read_bytes()
        except OSError:
            raise SnapshotError(
                f"object {key} has no local copy, and a write-only credential cannot read "
                "it from the bucket"
            ) from None

    def retain_tree_copies(self, keys: Collection[str]) -> None:
        """Drop the local tree copies but ``keys`` (the newest generation's tree packs,
        all the next capture may read)."""
        root = self.state / TREE_COPIES
        if not root.is_dir():
            return
        for copy in root.glob("*/*"):
            if copy.relative_to(self.state).as_posix() not in keys:
                copy.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        if key.startswith(TREE_COPIES) and self.write_only:
            return self._tree_copy(key)  # with read access the bucket's, never a stale copy
        copy = self.state / MANIFEST_COPIES / key.removeprefix(f"{MANIFEST_COPIES}/")
        if self.write_only and key.startswith(f"{MANIFEST_COPIES}/") and copy.exists():
            return copy.read_bytes()  # a manifest this node wrote (no GetObject allowed)
        try:
            response = self.client.get_object(
                Bucket=self.location.bucket, Key=self.location.key(key)
            )
            data: bytes = response["Body"].read()
        except Exception as error:
            if error_code(error) in ("404", "NoSuchKey"):
                raise SnapshotError(f"object {key} is missing from {self._where()}") from None
            raise self._error("read", key, error) from None
        return data

    def list_manifests(self) -> list[str]:
        if self.write_only:
            copies = self.state / MANIFEST_COPIES
            names = os.listdir(copies) if copies.is_dir() else []
            return sorted(name.removesuffix(".json") for name in names if name.endswith(".json"))
        prefix = self.location.key(f"{MANIFEST_COPIES}/")
        found: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    name = item["Key"][len(prefix) :]
                    if name.endswith(".json") and "/" not in name:
                        found.append(name.removesuffix(".json"))
        except Exception as error:
            raise self._error("list", prefix, error) from None
        return sorted(found)

    def put_manifest(self, generation: str, data: bytes) -> None:
        self.flush()  # every object first: a manifest never names a missing one
        self._ensure_record()
        if self.conditional is None:  # no object put by this instance: probe now
            self._mark_capture()
        key = manifest_key(generation)
        if not self._put_object(key, data):
            raise SnapshotError(f"generation {generation} already exists in {self._where()}")
        self.record.add(key)
        self._mark_done()
        copies = self.state / MANIFEST_COPIES
        copies.mkdir(exist_ok=True)
        copy = copies / f"{generation}.json"
        copy.with_suffix(".new").write_bytes(data)
        os.replace(copy.with_suffix(".new"), copy)
        for older in copies.glob("*.json"):  # the newest is what the next capture needs
            if older.name < copy.name:
                older.unlink()

    # --- capture markers ---------------------------------------------------------

    @property
    def _condition(self) -> dict[str, str]:
        """The put's condition: none for a store that ignores or refuses it (HEAD instead)."""
        return {} if self.conditional is False else {"IfNoneMatch": "*"}

    def _mark_capture(self) -> None:
        """This capture's marker, before its first object (once per instance); the first
        one probes whether the store honours If-None-Match (above)."""
        with self._marker_lock:
            if self.marker is not None:
                return
            name = f"{time.time_ns()}-{secrets.token_hex(6)}"
            key = f"{CAPTURES}{name}"
            body = f"capture started by {os.uname().nodename}\n".encode()

            def put() -> bool:
                """True: stored; False: answered 412."""
                try:
                    self.client.put_object(
                        Bucket=self.location.bucket,
                        Key=self.location.key(key),
                        Body=body,
                        **self._condition,
                    )
                except Exception as error:
                    if error_code(error) in PRECONDITION:
                        return False
                    raise
                return True

            try:
                try:
                    put()
                    if self.conditional is None:  # the same fresh key again: 412 expected
                        self.conditional = not put()
                except Exception as error:
                    if error_code(error) != "NotImplemented" or self.conditional is False:
                        raise
                    self.conditional = False
                    put()
            except Exception as error:
                raise self._error("write", key, error) from None
            self.marker = name
        if self.conditional is False:
            self._without_conditions()

    def _without_conditions(self) -> None:
        """The store does not honour If-None-Match: puts go after a HEAD, which a
        write-only credential may not send, so there nothing more is written."""
        if not self.write_only:
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s does not honour If-None-Match: each put is checked with a HEAD first",
                    self._where(),
                )
            return
        self._mark_done()  # the marker written: prunes need not wait for this capture
        failure = SnapshotError(
            f"{self._where()} does not honour conditional writes (If-None-Match: ignored, a "
            "second put of a new key was not refused, or refused), and a write-only credential cannot check "
            "whether an object exists before it puts it: nothing was written, rather than "
            "overwrite objects; use a store that honours If-None-Match (AWS S3, MinIO), or "
            "a credential that may read (s3:GetObject) without write_only"
        )
        self._failure = failure
        raise failure

    def _mark_done(self) -> None:
        """The marker's ``.done``: prunes need not wait for this capture any more. Its
        failure only holds prunes off for a grace period: logged, not raised (the
        generation is stored)."""
        if self.marker is None:
            return
        key = f"{CAPTURES}{self.marker}{DONE}"
        try:
            self.client.put_object(
                Bucket=self.location.bucket, Key=self.location.key(key), Body=b"done\n"
            )
        except Exception as error:
            log.warning("could not write %s in %s: %s", key, self._where(), describe(error))
        self.marker = None  # a next generation through this instance marks again

    def open_captures(self, since_ns: int) -> list[str]:
        """The capture markers written at or after ``since_ns`` without their ``.done``."""
        started: dict[str, int] = {}
        done: set[str] = set()
        for item in self.list_objects(CAPTURES):
            name = item.key.removeprefix(CAPTURES)
            if name.endswith(DONE):
                done.add(name.removesuffix(DONE))
            elif "/" not in name and item.modified_ns >= since_ns:
                started[name] = item.modified_ns
        return sorted(name for name in started if name not in done)

    # --- SupportsDelete (pruning) ---------------------------------------------------

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        full = self.location.key(prefix)
        strip = len(self.location.key(""))
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=full):
                for item in page.get("Contents", ()):
                    modified = item["LastModified"].timestamp()
                    yield StoredObject(item["Key"][strip:], int(item["Size"]), _ns(modified))
        except Exception as error:
            raise self._error("list", full, error) from None

    def delete(self, key: str, modified_before_ns: int | None = None) -> bool:
        """HEAD, then (with ``modified_before_ns``) no open capture, then DeleteObject."""
        bucket, full = self.location.bucket, self.location.key(key)
        try:
            head = self.client.head_object(Bucket=bucket, Key=full)
        except Exception as error:
            if error_code(error) in MISSING:
                return False
            raise self._error("check", key, error) from None
        if modified_before_ns is not None:
            if _ns(head["LastModified"].timestamp()) >= modified_before_ns:
                return False  # written since the cutoff
            if self._capture_seen_ns == modified_before_ns or self.open_captures(
                modified_before_ns
            ):
                self._capture_seen_ns = modified_before_ns  # this prune deletes no more
                return False
        try:
            self.client.delete_object(Bucket=bucket, Key=full)
        except Exception as error:
            raise self._error("delete", key, error) from None
        self.record.discard(key)
        with self._confirmed_lock:
            self._confirmed.discard(key)
        return True

    # --- uploads ---------------------------------------------------------------

    def flush(self) -> None:
        """Wait for every queued upload; raise the first failure."""
        wait(self._pending)  # their errors are kept in self._failure
        self._pending.clear()
        self._raise_failure()

    def close(self) -> None:
        self._objects.shutdown(wait=True, cancel_futures=True)
        self._parts.shutdown(wait=True, cancel_futures=True)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure = self._failure
            raise failure if isinstance(failure, SnapshotError) else SnapshotError(str(failure))

    def _upload(self, key: str, data: bytes) -> None:
        try:
            if self._failure is None:
                self._put_object(key, data)
                self.record.add(key)
                with self._confirmed_lock:
                    self._confirmed.add(key)
        except BaseException as error:
            if self._failure is None:
                self._failure = (
                    error if isinstance(error, SnapshotError) else self._error("write", key, error)
                )
            raise
        finally:
            with self._room:
                self._in_flight -= len(data)
                self._room.notify_all()

    def _put_object(self, key: str, data: bytes) -> bool:
        """Store ``data`` unless ``key`` exists: True when stored, False when it existed."""
        if self.conditional is False and self._exists(key):
            stored = False  # what a 412 would have said (a store without conditions)
        else:
            try:
                stored = self._send(key, data)
            except Exception as error:
                if error_code(error) == "NotImplemented" and self.conditional is not False:
                    self.conditional = False  # refused the condition: HEAD first (above)
                    self._without_conditions()
                    return self._put_object(key, data)
                if error_code(error) not in PRECONDITION:
                    raise self._error("write", key, error) from None
                stored = False
        with self._confirmed_lock:
            self._confirmed.add(key)
        with self._stats_lock:
            if stored:
                self.stats.objects_put += 1
                self.stats.bytes_put += len(data)
            else:
                self.stats.objects_present += 1
        return stored

    def _exists(self, key: str) -> bool:
        """A HEAD of ``key`` (also before each put to a store without If-None-Match)."""
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=self.location.key(key))
        except Exception as error:
            if error_code(error) in MISSING:
                return False
            raise self._error("check", key, error) from None
        return True

    def _send(self, key: str, data: bytes) -> bool:
        if len(data) > self.location.multipart_threshold:
            return self._multipart(self.location.key(key), data)
        self.client.put_object(
            Bucket=self.location.bucket, Key=self.location.key(key), Body=data, **self._condition
        )
        return True

    def _multipart(self, full_key: str, data: bytes) -> bool:
        bucket = self.location.bucket
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=full_key)["UploadId"]
        size = self.location.part_size

        def part(number: int) -> dict[str, Any]:
            body = data[(number - 1) * size : number * size]
            answer = self.client.upload_part(
                Bucket=bucket, Key=full_key, UploadId=upload, PartNumber=number, Body=body
            )
            with self._stats_lock:
                self.stats.parts_put += 1
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            numbers = range(1, (len(data) + size - 1) // size + 1)
            parts = list(self._parts.map(part, numbers))
            self.client.complete_multipart_upload(
                Bucket=bucket,
                Key=full_key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                **self._condition,
            )
        except Exception:
            try:  # not allowed to a write-only credential: the lifecycle rule cleans up
                self.client.abort_multipart_upload(Bucket=bucket, Key=full_key, UploadId=upload)
            except Exception:
                log.debug("could not abort the multipart upload of %s", full_key)
            raise
        return True

    def _where(self) -> str:
        return f"s3://{self.location.bucket}/{self.location.key('')}"

    def _error(self, doing: str, key: str, error: BaseException) -> SnapshotError:
        hint = ""
        if is_denied(error) and doing in ("read", "list", "check"):
            hint = (
                ": the credential cannot read the bucket (write-only?); list, verify and "
                "restore need a credential allowed s3:GetObject and s3:ListBucket"
            )
        elif is_denied(error) and doing == "delete":
            hint = (
                ": the credential may not delete (s3:DeleteObject); prune is meant for a "
                "more privileged credential ([backup] prune_access_key_env)"
            )
        elif is_denied(error):
            hint = ": the credential may not write (s3:PutObject) there"
        return SnapshotError(
            f"could not {doing} {key} in {self._where()} ({describe(error)}){hint}"
        )


def _ns(seconds: float) -> int:
    return round(seconds * 1e6) * 1000  # S3 times have at most microseconds
