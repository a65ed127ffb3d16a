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


class Gone(ShimError):
    """A session that has ended (deleted, expired, idle, OOM ...): the detail names the reason."""

    status = 410


class PayloadTooLarge(ShimError):
    status = 413


class InvalidRequest(ShimError):
    """A semantic validation failure with a string detail (e.g. timeout above ``max_timeout``)."""

    status = 422


class RateLimited(ShimError):
    status = 429


class InsufficientStorage(ShimError):
    """A tenant's stored history and artifacts reached its quota."""

    status = 507


class Unavailable(ShimError):
    """Queue full, backend starting, or the sandbox runtime is missing."""

    status = 503


class ClusterUnavailable(Unavailable):
    """The Kubernetes API could not be reached or answered 5xx/429 (raised by the kubernetes backend).

    Transient, like a storage fault: 503 with ``Retry-After``. The SDK retries it with the same
    idempotency key, so a create whose answer was lost is found again instead of run twice.
    """

    retry_after_seconds = 2

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(self.retry_after_seconds)})


class StorageUnavailable(Unavailable):
    """The job history store cannot be written right now (raised by ``backends/local/store.py``).

    A transient condition of the server, never of the request: the boundary answers 503 with a
    ``Retry-After``, and the worker retries its terminal writes instead of giving up on the job.
    """

    retry_after_seconds = 5

    def __init__(self, detail: str, *, cause: str = "") -> None:
        super().__init__(detail, headers={"Retry-After": str(self.retry_after_seconds)})
        self.cause = cause


class StorageBusy(StorageUnavailable):
    """SQLite stayed locked past its busy timeout (a backup tool or a second server holds the lock)."""


class StorageFull(StorageUnavailable):
    """The disk holding the job history database is full."""

    retry_after_seconds = 30


STORAGE_BUSY = "The job history database is busy (locked by another process). Try again later."
STORAGE_FULL = "The server is out of disk space: the job history database cannot be written. Try again later."


class BackendStartError(Exception):
    """The backend cannot start (e.g. strict mode without a working runsc); the server refuses to run."""
