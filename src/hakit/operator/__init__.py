"""Operator commands (being split into modules: intents.py holds them all for now)."""

from hakit.operator.intents import (
    HANDOVER,
    PAUSED,
    AdminClient,
    IntentWatcher,
    OperatorError,
    event_from_json,
    expired_words,
    handover_event,
    handover_timeout,
    load_token,
    operation_for,
    operator_actor,
    perform,
    request_path_loss,
    status_document,
)

__all__ = [
    "HANDOVER",
    "PAUSED",
    "AdminClient",
    "IntentWatcher",
    "OperatorError",
    "event_from_json",
    "expired_words",
    "handover_event",
    "handover_timeout",
    "load_token",
    "operation_for",
    "operator_actor",
    "perform",
    "request_path_loss",
    "status_document",
]
