"""What the service raises on purpose, each with its HTTP status.

A :class:`ClientError` is the client's to fix: a 4xx whose message names the field and the
problem. Anything else that escapes a route is the service's own fault: a 500 with a request
id, and the traceback in the log (see ``app.py``). A plain ``ValueError`` from deep inside is
such a fault too, never reported as the client's.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An expected failure with an HTTP status of its own."""

    status: int = 500

    def __init__(self, problem: str, field: str | None = None) -> None:
        self.problem = problem
        self.field = field
        super().__init__(f"{field}: {problem}" if field else problem)


class ClientError(ServiceError):
    """A request the client must change (4xx)."""

    status = 400


class Invalid(ClientError):
    """A value the service cannot accept (422), naming its field."""

    status = 422


class NotFound(ClientError):
    """An id the service does not know (404)."""

    status = 404


class Conflict(ClientError):
    """A request that contradicts the service's state (409)."""

    status = 409


class NotReady(ServiceError):
    """Nothing to serve yet (503): retry after a second."""

    status = 503


class Unavailable(NotReady):
    """The database cannot be reached now (503): retry after a second. Nothing the request
    asked to store was stored."""
