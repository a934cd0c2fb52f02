"""The per-node agent: supervisor + probes + lease + policy -> actions.

- agent.py          ``Agent``: one node's loops (probes, lease, heartbeat, operator), the
                    policy's events in
- actions.py        ``ActionRunner``: each policy event decided, each action it returns
                    carried out by the part that owns it
- lease.py          ``LeaseKeeper``: take, renew, promote, give back the leader lease; its
                    deadline, self-fencing, waking after a stall, a replaced store refused
- operator_side.py  ``OperatorSide``: the operator's intents and admin API, draining, the
                    routers' lost path, forgetting silent routers
- failsafe.py       ``FailsafeSide``: failsafe mode's rounds of confirmations (the active)
                    and answers (the others) over the admin API
- storeio.py        every call to the coordination store on one thread, in issue order
- stall.py          the agent's own stalls (its monotonic clock jumped: a frozen VM)
- startup.py        once, as it starts: the sweep of what an earlier agent left, the
                    cold start's ``Boot`` from the node records
- snapshots.py      ``[snapshot] interval``: the running active's scheduled captures, each in
                    a process of its own (snapshot_job.py), abandoned if the lease goes

What the agent drives lives beside it: the policy (hakit.policy), the app's
supervisor and shim (hakit.supervisor), the probes and data path (hakit.health),
fencing and the lease watchdog (hakit.fencing), the store (hakit.coord).
"""

from hakit.agent.agent import Agent

__all__ = ["Agent"]
