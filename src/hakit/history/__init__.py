"""The event history: what happened, and why.

- kinds.py         the vocabulary: event kinds, alert kinds, causes, [notify] selectors
- facts.py         the keys of the other facts events carry in data, and the words for numbers
- eventlog.py      event lines and JSON records (``hakit events``), time filters
- why.py           ``hakit why``: the last failover explained, or why one did not happen
- why_fence.py     for why.py: the fencing before a promotion, the promotions it blocked
- why_failsafe.py  for why.py: failsafe mode's outages of the store
- reading.py       for why.py: terms, and the facts events carry in their data
- now.py           the cluster as it is now (node conditions, the pause) for why and status
"""
