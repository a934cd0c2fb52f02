"""Helpers shared by tests and benchmarks: real third-party servers started on free ports."""
