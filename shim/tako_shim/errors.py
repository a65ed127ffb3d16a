"""Domain errors raised by backends and handlers; one middleware turns them into HTTP responses."""

from __future__ import annotations


class ShimError(Exception):
    """Base class: ``status`` is the HTTP status, ``detail`` the string the client sees."""

    status = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(ShimError):
    status = 400


class Unauthorized(ShimError):
    status = 401


class NotFound(ShimError):
    status = 404


class WaitTimeout(ShimError):
    status = 408


class Conflict(ShimError):
    status = 409


class PayloadTooLarge(ShimError):
    status = 413


class InvalidRequest(ShimError):
    """A semantic validation failure with a string detail (e.g. timeout above ``max_timeout``)."""

    status = 422


class RateLimited(ShimError):
    status = 429


class Unavailable(ShimError):
    """Queue full, backend starting, or the sandbox runtime is missing."""

    status = 503


class BackendStartError(Exception):
    """The backend cannot start (e.g. strict mode without a working runsc); the server refuses to run."""
