"""Login sessions held in memory only, as Tomcat does by default.

A restart or a move to another node therefore loses them, which is exactly what
sticky sessions in the router have to cope with. With a route configured the
cookie value is ``<id>.<route>`` (Tomcat's jvmRoute) so a router can read which
node a user belongs to.
"""

from __future__ import annotations

import secrets
import threading

COOKIE_NAME = "JSESSIONID"


def session_id_from_cookie(value: str) -> str:
    """``<id>.<route>`` or ``<id>`` -> ``<id>`` (the route is for the router, not us)."""
    return value.split(".", 1)[0]


class Sessions:
    def __init__(self, route: str) -> None:
        self.route = route
        self._users: dict[str, str] = {}
        self._lock = threading.Lock()

    def create(self, user: str) -> str:
        """A new session for ``user``; returns the cookie value to set."""
        session_id = secrets.token_hex(16).upper()  # Tomcat's format: 32 hex digits
        with self._lock:
            self._users[session_id] = user
        return f"{session_id}.{self.route}" if self.route else session_id

    def user_for(self, cookie_value: str) -> str | None:
        with self._lock:
            return self._users.get(session_id_from_cookie(cookie_value))

    def end(self, cookie_value: str) -> None:
        with self._lock:
            self._users.pop(session_id_from_cookie(cookie_value), None)
