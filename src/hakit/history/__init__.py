"""The event history: what happened, and why.

- eventlog.py  event lines and JSON records (``hakit events``), time filters
- why.py       ``hakit why``: the last failover explained, or why one did not happen
"""
