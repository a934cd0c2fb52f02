"""One line per request and per lifecycle step, on stderr, flushed at once.

The supervisor redirects stderr to a per-node log file; flushing every line
means a crash (``os._exit``) never loses what happened just before it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class LineLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()  # handler threads must not interleave lines
        self.node = "-"  # the route or the port, once known

    def __call__(self, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
        line = f"{stamp}.{int(now % 1 * 1000):03d} hakit-demo[{self.node}] {message}\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed or full log must not take the app down
