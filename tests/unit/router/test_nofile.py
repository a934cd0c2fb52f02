"""The router raises its own open files limit (each connection is a descriptor)."""

from __future__ import annotations

import resource
import subprocess
import sys

CODE = """
import resource
from hakit.router.descriptors import raise_open_files_limit
print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run(
        [sys.executable, "-c", CODE],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=low_soft_limit,
    )
    returned, soft = (int(word) for word in out.stdout.split())
    assert returned == soft > 256
    if hard != resource.RLIM_INFINITY:
        assert soft == hard
