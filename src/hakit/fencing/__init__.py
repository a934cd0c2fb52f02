"""Fencing: no two nodes ever serve as the active one.

- fence.py     who must be fenced before a promotion and running ``failover.fence_command``
               (``Fencer``), and the old node's database sessions (through hakit.dbfence)
- watchdog.py  the lease watchdog (``LeaseWatchdog``): the thread that kills this node's
               app at the lease deadline even when the agent's loop is blocked

The lease itself (holder, epoch, expiry) is kept by the coordination store (hakit.coord)
and renewed by the agent (hakit.agent); the shim (hakit.supervisor.shim) keeps the same
deadline from outside the agent.
"""
