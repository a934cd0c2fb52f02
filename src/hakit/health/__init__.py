"""How a node is seen to live, by its agent and by the routers.

- probe.py     the ``/status`` contract's client, health URL and command probes, and the
               database check (the agent's probes; the router's checks classify alike)
- datapath.py  the routers' reports of what they see of each node, and the pure decisions
               that read them (is an expired holder dead? has the active lost its path?)

Shared by the agent (hakit.agent) and the router (hakit.router), so it belongs to neither.
"""
