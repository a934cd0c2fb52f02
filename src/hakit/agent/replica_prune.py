"""Replicated storage: each node's repository pruned as it goes, never from under a reader.

Without it a node's repository (``[replication] directory``) would grow by a
generation every ``interval``, forever. Both ends prune with hakit.snapshot.prune
(mark and sweep) and one rule (``policy``): the newest ``[replication] keep``
generations stay, and so does every generation that was the newest at some moment
of the last ``[replication] prune_grace``, and every object younger than it that
no generation names yet (prune's grace rules).

- **The active** prunes in its capture process, right after each capture
  (hakit.agent.snapshot_job: the ``Job``'s ``keep_last`` and ``grace``, the path
  scheduled snapshots take); a prune that fails leaves the generation captured
  and is reported on its own (hakit.agent.replication).
- **A standby** prunes after each generation it applied (``Pruning.after_apply``), that
  generation protected whatever the policy says: the next pull copies only what
  its repository lacks, and the node's first capture after a promotion builds on
  its newest generation. Nowhere else: a pull that failed keeps what it copied
  for the next one.

Why a pull never lands a partial generation, nor loses what a copy needs:

- **On the active**, a standby pulls the generation that was the newest when it
  listed them. Prune keeps it, and every object it names, while it is among the
  newest ``keep`` or was the newest within ``prune_grace``: for ``prune_grace``
  at least after a newer one was written. A pull slower than that may find an
  object gone: the peer answers 404 and ``pull_generation`` raises before it
  writes the manifest (objects first, manifest last), so no generation appears
  on the standby; its turn records the failure and the next turn pulls the
  newest generation, without copying again what the failed pull copied.
- **On a standby**, its pulls, applies and prunes, and its captures once it is
  active, run one at a time (hakit.agent.replication's ``_writing`` lock). A
  pull that finds an object already there relies on it without writing it; it
  refreshes its time (``LocalStore.refresh``), as a capture's ``put_if_absent``
  does, so a prune from outside (``hakit snapshot prune`` on that directory)
  keeps it for its grace period too.
- **The copies beside the home** need nothing from the repository once restored
  (hakit.snapshot.apply); ``keep`` of them stay there
  (hakit.snapshot.apply.prune_generations), the one the home links to always.

The agent prunes its repository itself; a prune from outside does not wait for
a pull under way, and relies on the refreshed times above (a pull that takes
longer than that prune's grace period may then fail, whole, and be retried).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hakit.errors import HakitError
from hakit.history.kinds import EventKind
from hakit.snapshot.prune import PruneReport, prune
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.store import open_local_store

log = logging.getLogger("hakit.agent.replication")


def policy(keep: int) -> RetentionPolicy:
    """What a node's repository keeps beyond the grace rules: its newest ``keep``."""
    return RetentionPolicy(keep_last=keep)


def prune_repository(repository: Path, keep: int, grace: float, applied: str) -> PruneReport:
    """A standby's repository, pruned once ``applied`` is its copy (kept whatever
    ``keep`` says)."""
    return prune(open_local_store(repository), policy(keep), grace=grace, protected=(applied,))


def summary(removed_generations: int, removed_objects: int) -> str:
    """ "; pruned N generations, M objects" ("" when nothing went)."""
    if not (removed_generations or removed_objects):
        return ""
    return f"; pruned {removed_generations} generations, {removed_objects} objects"


class Pruning:
    """One node's repository pruning, as its replication side sees it: a failure is
    recorded once per reason (a ``replication`` event; the generation captured or
    applied stands), and once when pruning works again."""

    def __init__(
        self, node: str, repository: Path, keep: int, grace: float, record: Callable[..., None]
    ) -> None:
        self.node = node
        self.repository = repository
        self.keep = keep
        self.grace = grace
        self._record = record
        self.problem: str | None = None

    def captured(self, data: Mapping[str, Any], error: str) -> str:
        """The prune of the active's capture process (hakit.agent.snapshot_job's outcome:
        its ``data`` and ``prune_error``); what went, for the log."""
        self._ended(error)
        pruned = data.get("pruned")
        removed = len(pruned) if isinstance(pruned, list) else 0
        return summary(removed, int(data.get("objects_removed") or 0))

    async def after_apply(self, applied: str) -> str:
        """A standby's prune once ``applied`` is its copy (in a thread); what went."""
        try:
            report = await asyncio.to_thread(
                prune_repository, self.repository, self.keep, self.grace, applied
            )
        except (HakitError, OSError) as error:
            self._ended(str(error))
            return ""
        self._ended("")
        return summary(len(report.removed_generations), report.removed_objects)

    def _ended(self, error: str) -> None:
        if error:
            log.warning("replication: pruning %s failed: %s", self.repository, error)
            if error != self.problem:
                self.problem = error
                self._record(
                    EventKind.REPLICATION,
                    f"pruning the repository of {self.node} failed: {error}",
                    data={"error": error, "prune": True},
                )
        elif self.problem is not None:
            self.problem = None
            self._record(
                EventKind.REPLICATION, f"pruning the repository of {self.node} works again"
            )
