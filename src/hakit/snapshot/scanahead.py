"""The home scan run ahead of the walk, in a helper process on the other core.

The walk (hakit.snapshot.walk) asks for each directory's listing in its order
(``HomeScan.listing``). With a helper (hakit.snapshot.scan run as a script), the
listings come from it: it lstats the home on the second core while the walk
reads and hashes what changed on the first (measured: benchmarks/snapshot.py,
the incremental rows). Without one (one core, no interpreter to start, or the
helper gone), the walk lists each directory itself, the same way.

The helper is started early (``start``: the interpreter's ~10 ms overlap the
reading of the previous manifest and the database capture) and told what to scan
only once the database was captured (``begin``): a listing made earlier could
miss an attachment written before a row the database copy holds.

The walk and the helper can disagree, as the home changes while both look at
it: a directory the helper listed may have gone by the time the walk comes to
it, or one may have appeared. The listings come in the walk's order (depth
first, sorted: the order of the paths' components), so a listing before the one
asked for is one the walk no longer has, dropped; one after it means the
directory asked for is new to the helper, and the walk lists it itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from types import TracebackType
from typing import NamedTuple

from hakit.snapshot import scan

# The pipe holds this much of the helper's listings, so it rarely waits for the walk
# (a home of 20,000 files lists in ~600 kB). Linux's default is 64 kB.
PIPE_SIZE = 1 << 20


class Listing(NamedTuple):
    """One directory of the home as the scan found it (hakit.snapshot.scan.Record)."""

    relative: str  # its path in the home ("" for the home itself)
    git: bool  # a git directory: walked by the walk alone (refs before objects)
    names: list[str]  # its children kept (files, directories, symlinks), sorted
    kinds: str  # each child's type, one character each (FILE, DIRECTORY, SYMLINK)
    ends: list[int]  # where each part ends
    digests: list[str]  # each part's stats digest


def helper_useful() -> bool:
    """A helper only pays with a second CPU to run on."""
    return len(os.sched_getaffinity(0)) > 1


def _order(relative: str) -> list[str]:
    """The walk's order of a directory: by its path's components (the home first)."""
    return relative.split("/") if relative else []


class HomeScan:
    """The listings of ``home``'s directories, in the walk's order (see the module)."""

    def __init__(
        self, home: str, pins: str, exclude: frozenset[str], *, helper: bool | None = None
    ) -> None:
        self.home = home
        self.pins = pins  # the pin directory's name in the home (left out)
        self.exclude = exclude
        self.helper = helper_useful() if helper is None else helper
        self.listed_here = 0  # listings the walk made itself (no helper, or it lacked them)
        self.listed_ahead = 0  # listings the helper made (the walk took them as they came)
        self._process: subprocess.Popen[bytes] | None = None
        self._head: Listing | None = None  # the helper's next listing, read ahead
        self._begun = False

    # --- the helper's lifetime --------------------------------------------------------

    def start(self) -> None:
        """Start the helper (it waits for ``begin``); no helper when it cannot start."""
        if not self.helper or not sys.executable or self._process is not None:
            return
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", scan.__file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError:
            return  # the walk lists alone
        assert self._process.stdout is not None
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._process.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def begin(self) -> None:
        """Tell the helper what to scan (the database is captured). The message fits
        the pipe's buffer: the walk does not wait for the helper to read it. Once."""
        process = self._process
        if process is None or self._begun:
            return
        self._begun = True
        assert process.stdin is not None
        try:
            process.stdin.write(scan.encode_record((self.home, self.pins, sorted(self.exclude))))
            process.stdin.close()
        except OSError:
            self.close()  # the walk lists alone

    def close(self) -> None:
        """Stop the helper if it still runs (by its PID: this scan started it) and reap it."""
        process, self._process = self._process, None
        self._head = None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> HomeScan:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # --- the listings -----------------------------------------------------------------

    def listing(self, path: str, relative: str) -> Listing:
        """The listing of the directory ``path`` (``relative`` in the home): the helper's
        when it has it next, else made here."""
        wanted = _order(relative)
        while True:
            head = self._peek()
            if head is None:
                break
            order = _order(head.relative)
            if order == wanted:
                self._head = None
                self.listed_ahead += 1
                return head
            if order > wanted:
                break  # new to the helper: listed here
            self._head = None  # a directory the walk no longer has
        self.listed_here += 1
        return Listing(*scan.list_directory(path, relative, self.pins, self.exclude))

    def _peek(self) -> Listing | None:
        if self._head is None and self._process is not None:
            assert self._process.stdout is not None
            try:
                record = scan.read_record(self._process.stdout)
                self._head = None if record is None else Listing(*record)
            except (OSError, ValueError, EOFError, TypeError):
                self._head = None
            if self._head is None:
                self.close()  # done, or stopped early: the walk lists the rest
        return self._head
