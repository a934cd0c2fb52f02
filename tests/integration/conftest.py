"""Fixtures of the router test harness (tests/support/router_harness.py) for every module here.

A module that defines a fixture of the same name uses its own.
"""

from tests.support.router_harness import backends, cluster, router_for  # noqa: F401
