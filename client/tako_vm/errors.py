"""Every error the SDK raises, typed by what went wrong (the Tako VM 0.3.0 hierarchy, plus subclasses).

The 0.3.0 names stay the bases, so `except ClientError` / `except ServerError` /
`except TransportError` / `except ValidationError` still catch everything they caught in 0.3.0;
the subclasses (named as in openai-python) say which status or failure it was.

TakoVMError
├── TransportError                the request never got an HTTP answer
│   └── APIConnectionError        connect error, reset, protocol error
│       └── APITimeoutError       connect, read, write or pool timeout
├── APIError                      the server answered with an HTTP error status
│   ├── ServerError               5xx; `retryable` for 502/503/504
│   │   └── InternalServerError   every 5xx answer
│   └── ClientError               4xx
│       ├── BadRequestError       400
│       ├── AuthenticationError   401
│       ├── PermissionDeniedError 403
│       ├── NotFoundError         404
│       ├── WaitTimeoutError      408: a long-poll expired; the job itself is unaffected
│       ├── ConflictError         409: idempotency key reused with a different payload
│       ├── PayloadTooLargeError  413
│       ├── UnprocessableEntityError  422 (also a ValidationError): the server refused a field
│       └── RateLimitError        429; `retry_after` seconds when the server said so
├── ExecutionError            the code ran and failed (`send`)
├── MalformedResponseError    a 2xx answer without the fields the call needs
└── ValidationError           the arguments were refused: by the SDK before sending, or (as
                              UnprocessableEntityError) by the server with a 422
"""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientError",
    "ConflictError",
    "ExecutionError",
    "InternalServerError",
    "MalformedResponseError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "SDKExecutionError",
    "ServerError",
    "TakoVMError",
    "TransportError",
    "UnprocessableEntityError",
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


class APIConnectionError(TransportError):
    """The server could not be reached or the connection broke before an answer."""


class APITimeoutError(APIConnectionError):
    """A connect, read, write or pool timeout expired before an answer."""


class ValidationError(TakoVMError):
    """The arguments were refused: by the SDK before sending (e.g. `send` without dataclass
    annotations), or by the server with a 422 (then it is an `UnprocessableEntityError`)."""


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


class InternalServerError(ServerError):
    """Any 5xx answer (openai-python's name); `retryable` says whether repeating may help."""


class ClientError(APIError):
    """A 4xx answer: the request itself was refused; sending it again unchanged will not help."""


class BadRequestError(ClientError):
    """400: e.g. rerun of an unfinished job, or an invalid artifact path."""


class AuthenticationError(ClientError):
    """401: missing or invalid API key."""


class PermissionDeniedError(ClientError):
    """403: the key is valid but may not do this (e.g. another tenant's job)."""


class NotFoundError(ClientError):
    """404: no such job, execution, artifact or job type (or the job already finished, for cancel)."""


class SessionEndedError(ClientError):
    """410: the session has ended (deleted, expired, idle, oom_killed ...); `detail` names the reason."""


class WaitTimeoutError(ClientError):
    """408: the long-poll ended before the job finished; the job keeps running."""


class ConflictError(ClientError):
    """409: the idempotency key was already used with a different payload."""


class PayloadTooLargeError(ClientError):
    """413: the request body is larger than the server accepts."""


class UnprocessableEntityError(ClientError, ValidationError):
    """422: the server refused a field; `detail` names it (a JSON list for schema errors)."""


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
