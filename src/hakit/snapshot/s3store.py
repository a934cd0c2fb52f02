"""A repository in an S3 bucket (boto3): puts only, concurrent, write-only capable.

Every object goes under ``<prefix>/`` with the format's keys (hakit.snapshot.format).

- **Never an overwrite.** Each put carries ``If-None-Match: *``: a key that
  exists answers 412 and is left as it is (counted as present). Content-addressed
  objects and one new manifest key per generation mean normal operation neither
  overwrites nor deletes, so bucket versioning and Object Lock change nothing.
  (A store that ignores the header rewrites the same bytes: harmless.)
- **Concurrent.** ``put_if_absent`` hands the object to a pool of
  ``max_concurrency`` threads and returns; objects above ``multipart_threshold``
  go up as multipart uploads whose parts run concurrently too. Bytes in flight
  are bounded (``max_in_flight``), so memory stays flat whatever the home's size.
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
  refill it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.snapshot.format import MiB, SnapshotError, manifest_key

log = logging.getLogger(__name__)

RECORD = "keys"
MANIFEST_COPIES = "manifests"


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # without a trailing "/"
    max_concurrency: int = 100
    multipart_threshold: int = 8 * MiB
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


class KeyRecord:
    """The keys known stored, one per line; each append fsynced before it counts."""

    def __init__(self, state: Path) -> None:
        self.path = state / RECORD
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        if self.path.exists():
            # A line cut short by a crash (no newline yet) was never acknowledged.
            self._keys = {line for line in self.path.read_text().split("\n")[:-1] if line}

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def known(self) -> set[str]:
        return set(self._keys)

    def add(self, key: str) -> None:
        with self._lock:
            if key in self._keys:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(key + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._keys.add(key)

    def replace(self, keys: Iterable[str]) -> None:
        """The whole record at once (a temporary file renamed over it)."""
        with self._lock:
            fresh = set(keys)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".new")
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.writelines(key + "\n" for key in sorted(fresh))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
            self._keys = fresh


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
        self._condition: dict[str, str] = {"IfNoneMatch": "*"}  # never overwrite
        state.mkdir(parents=True, exist_ok=True)
        # A missing record is rebuilt before the first put, when the credential may list.
        self._rebuild = not write_only and not (state / RECORD).exists()
        self.record = KeyRecord(state)

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
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=self.location.key(key))
        except Exception as error:
            if error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error("check", key, error) from None
        return True

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Queued for upload unless the record has it: True when queued (sent)."""
        self._raise_failure()
        self._ensure_record()
        if key in self.record:
            return False
        size = len(data)
        with self._room:
            while self._in_flight and self._in_flight + size > self.location.max_in_flight:
                self._room.wait()
            self._in_flight += size
        self._pending.append(self._objects.submit(self._upload, key, data))
        self._pending = [future for future in self._pending if not future.done()]
        return True

    def get(self, key: str) -> bytes:
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
        key = manifest_key(generation)
        if not self._put_object(key, data):
            raise SnapshotError(f"generation {generation} already exists in {self._where()}")
        self.record.add(key)
        copies = self.state / MANIFEST_COPIES
        copies.mkdir(exist_ok=True)
        copy = copies / f"{generation}.json"
        copy.with_suffix(".new").write_bytes(data)
        os.replace(copy.with_suffix(".new"), copy)
        for older in copies.glob("*.json"):  # the newest is what the next capture needs
            if older.name < copy.name:
                older.unlink()

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
        try:
            stored = self._send(key, data)
        except Exception as error:
            if error_code(error) == "NotImplemented" and self._condition:
                # A store without conditional writes: the same bytes under the same name
                # (content addressed; manifests have fresh names) are rewritten, harmless.
                log.warning("%s does not support If-None-Match; puts unconditional", self._where())
                self._condition = {}
                return self._put_object(key, data)
            if error_code(error) not in ("PreconditionFailed", "412"):
                raise self._error("write", key, error) from None
            stored = False
        with self._stats_lock:
            if stored:
                self.stats.objects_put += 1
                self.stats.bytes_put += len(data)
            else:
                self.stats.objects_present += 1
        return stored

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
        elif is_denied(error):
            hint = ": the credential may not write (s3:PutObject) there"
        return SnapshotError(
            f"could not {doing} {key} in {self._where()} ({describe(error)}){hint}"
        )
