"""Notifications: a log line always; a webhook and e-mail for the alerts ``[notify]`` selects.

- base.py     ``Notifier``, ``Notification``, the log and the fan-out to targets
- factory.py  ``notifier_from_config``: the agent's notifier from ``[notify]``
- webhook.py  one JSON POST per alert, retried while the receiver may recover
- email.py    one e-mail per alert over SMTP
"""

from hakit.notify.base import (
    LogNotifier,
    MultiNotifier,
    Notification,
    Notifier,
    Target,
    close_notifier,
    selected,
)
from hakit.notify.factory import notifier_from_config

__all__ = [
    "LogNotifier",
    "MultiNotifier",
    "Notification",
    "Notifier",
    "Target",
    "close_notifier",
    "notifier_from_config",
    "selected",
]
