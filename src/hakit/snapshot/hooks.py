"""The freeze and thaw hooks: commands run before and after a capture.

A freeze puts the app in a state where its home and database agree without a
write in flight (the sample app's maintenance lock, Bitbucket's backup client);
the thaw always runs once a freeze was attempted, even when the capture failed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from hakit.snapshot.format import SnapshotError

Hook = str | Sequence[str]  # one shell string, or argv


def run_hook(what: str, command: Hook, timeout: float = 300.0) -> None:
    shell = isinstance(command, str)
    try:
        done = subprocess.run(
            command if shell else list(command),
            shell=shell,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SnapshotError(f"the {what} hook {command!r} failed: {error}") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-500:]
        raise SnapshotError(
            f"the {what} hook {command!r} exited with {done.returncode}: {output or 'no output'}"
        )
