"""The S3 store's local record of the keys it knows stored (hakit.snapshot.s3store says
what it is for, and why it is no proof that an object is still there).

``keys`` in the node's state directory, one key per line, each append fsynced before it
counts; a line cut short by a crash was never acknowledged and is ignored.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

RECORD = "keys"


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

    def discard(self, key: str) -> None:
        """Forget ``key`` in memory (pruned): the file keeps it, and a later instance
        trusts the record for nothing but ``has`` (above)."""
        with self._lock:
            self._keys.discard(key)

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
