"""Operator commands: switchover, failover, pause, resume, status.

- intents.py    the operator's intents in the store (pause, handover) and an agent's
                reading of them (agent side)
- commands.py   a command carried out against the store: checks, the intent written, the
                event recorded; the status document
- admin_api.py  the agent's authenticated HTTP API for the commands (agent side)
- client.py     the CLI's side: the admin API client, else the store directly

Import from the modules: this package's ``__init__`` imports nothing, so the agent's
side does not load the CLI's HTTP client and the other way round.
"""
