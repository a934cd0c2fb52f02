"""The agent's notifier, from the config: the log, plus the targets ``[notify]`` configures.

The one module that knows every kind of target: the targets themselves know only
hakit.notify.base, never this module or the package.
"""

from __future__ import annotations

from hakit.config import Config
from hakit.notify.base import LogNotifier, MultiNotifier, Notifier, Target
from hakit.notify.email import EmailNotifier
from hakit.notify.webhook import WebhookNotifier


def notifier_from_config(cfg: Config) -> Notifier:
    """The agent's notifier: the log, plus the webhook and e-mail ``[notify]`` configures."""
    notify = cfg.notify
    targets: list[Target] = []
    if notify.webhook_url is not None:
        targets.append(
            WebhookNotifier(
                notify.webhook_url,
                cluster=cfg.cluster.name,
                timeout=notify.webhook_timeout,
                retries=notify.webhook_retries,
                headers=notify.webhook_headers,
            )
        )
    if notify.smtp_host is not None and notify.mail_from is not None:
        targets.append(
            EmailNotifier(
                notify.smtp_host,
                notify.smtp_port,
                cluster=cfg.cluster.name,
                sender=notify.mail_from,
                recipients=notify.mail_to,
                starttls=notify.smtp_starttls,
                user=notify.smtp_user,
                password=notify.smtp_password,
                timeout=notify.smtp_timeout,
            )
        )
    if not targets:
        return LogNotifier()
    return MultiNotifier(cfg.cluster.name, targets, events=notify.events)
