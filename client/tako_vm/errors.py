"""Every error the SDK raises, typed by what went wrong (the Tako VM 0.3.0 hierarchy, plus subclasses).

TakoVMError
├── TransportError            the request never got an HTTP answer (connect, read timeout, reset)
├── APIError                  the server answered with an HTTP error status
│   ├── ServerError           5xx; `retryable` for 502/503/504
│   └── ClientError           4xx
│       ├── AuthenticationError   401
│       ├── NotFoundError         404
│       ├── WaitTimeoutError      408: a long-poll expired; the job itself is unaffected
│       ├── ConflictError         409: idempotency key reused with a different payload
│       └── RateLimitError        429; `retry_after` seconds when the server said so
├── ExecutionError            the code ran and failed (`send`)
├── MalformedResponseError    a 2xx answer without the fields the call needs
└── ValidationError           the SDK refused the arguments before sending anything
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationError",
    "ClientError",
    "ConflictError",
    "ExecutionError",
    "MalformedResponseError",
    "NotFoundError",
    "RateLimitError",
    "SDKExecutionError",
    "ServerError",
    "TakoVMError",
    "TransportError",
    "ValidationError",
    "WaitTimeoutError",
]

RETRYABLE_STATUSES = frozenset({502, 503, 504})


class TakoVMError(Exception):
    """Base class of every error raised by the SDK."""

    def __init__(self, message: str, *, correlation_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.correlation_id = correlation_id


class TransportError(TakoVMError):
    """No HTTP response: the connection failed, was reset, or the read timed out."""


class APIError(TakoVMError):
    """The server answered with an HTTP error status; `detail` is its `detail` field as a string."""

    def __init__(self, status_code: int, detail: str, *, correlation_id: str | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {detail}", correlation_id=correlation_id)
        self.status_code = status_code
        self.detail = detail


class ServerError(APIError):
    """A 5xx answer. `retryable` is true for 502/503/504 (gateway trouble, queue full, overload)."""

    @property
    def retryable(self) -> bool:
        return self.status_code in RETRYABLE_STATUSES


class ClientError(APIError):
    """A 4xx answer: the request itself was refused; sending it again unchanged will not help."""


class AuthenticationError(ClientError):
    """401: missing or invalid API key."""


class NotFoundError(ClientError):
    """404: no such job, execution, artifact or job type (or the job already finished, for cancel)."""


class WaitTimeoutError(ClientError):
    """408: the long-poll ended before the job finished; the job keeps running."""


class ConflictError(ClientError):
    """409: the idempotency key was already used with a different payload."""


class RateLimitError(ClientError):
    """429: too many requests; `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        correlation_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status_code, detail, correlation_id=correlation_id)
        self.retry_after = retry_after


class ExecutionError(TakoVMError):
    """The code ran in the sandbox and did not succeed."""

    def __init__(
        self,
        message: str,
        *,
        stdout: str = "",
        stderr: str = "",
        exit_code: int | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(message, correlation_id=correlation_id)
        self.stdout = stdout
        self.stderr = stderr
        self.exit_code = exit_code


SDKExecutionError = ExecutionError
"""The 0.3.0 name of `ExecutionError`."""


class MalformedResponseError(TakoVMError):
    """A 2xx response whose body is not JSON or lacks the field the call needs (e.g. `job_id`)."""


class ValidationError(TakoVMError):
    """The SDK refused the arguments before sending (e.g. `send` without dataclass annotations)."""
