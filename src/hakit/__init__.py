"""hakit: high availability for single-writer stateful web applications."""

__version__ = "0.1.0"
