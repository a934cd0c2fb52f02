"""Running hakit as a system service: systemd units and the sd_notify protocol.

- sdnotify.py  readiness, status and watchdog pings to systemd (``Type=notify``,
               ``WatchdogSec=``); nothing when not started by systemd
- units.py     the agent and router units for a config (``hakit systemd``)

Imports nothing here: the agent imports sdnotify.py directly.
"""
