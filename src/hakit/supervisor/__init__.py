"""The app's supervision on one node: start, stop and kill it, and never let it outlive its agent.

- process.py    ``AppProcess``: start / stop / kill one local app through its shim; its exit
- exits.py      how an exit is told: out of memory or a crash, and its words (pure)
- launch.py     the app's command line and environment on a node, and its ``AppProcess``
- shim.py       the app's parent (``python -m hakit.supervisor.shim``): kills the app when the
                agent dies or the lease deadline passes
- lifeline.py   the agent <-> shim messages and the deadline rule (pure)
- cgroup.py     a cgroup (v2) per app where the machine allows it
- leftovers.py  what an earlier agent of the node left running, found and stopped
- proctable.py  /proc: process groups, descendants, start times

Deliberately empty of imports: the shim starts with every app start and must load only
the standard library and its three small neighbours (lifeline, cgroup, proctable).
"""
