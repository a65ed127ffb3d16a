"""The I/O-free core shared by `Client`, `AsyncClient` and the module-level functions.

Everything that does not touch the network lives here: the configuration, one `Call` per API
request (method, path, query, body, read timeout, whether it may be retried, how to parse the
answer), the retry policy, the mapping of HTTP error answers to typed exceptions, and the engine
(`steps`) that turns an operation's plan into `Send` / `Sleep` steps. The sync and the async
client only perform those steps (`http.send`, `sleep`); every decision is made here, once.
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

from tako_vm._version import __version__
from tako_vm.errors import (
    RETRYABLE_STATUSES,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    InternalServerError,
    MalformedResponseError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    SessionEndedError,
    TakoVMError,
    TransportError,
    UnprocessableEntityError,
    ValidationError,
    WaitTimeoutError,
)

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_BASE_URL = "http://localhost:8000"
MAX_SERVER_WAIT_SECONDS = 300.0
"""The longest single long-poll the server accepts (`GET /jobs/{id}/result?wait=true&timeout=`)."""
MIN_SERVER_WAIT_SECONDS = 1.0
QUICK_CALL_READ_TIMEOUT = 10.0
"""Read timeout of `health`, `pool_stats`, `dlq_stats`: they answer at once or not at all."""
SYNC_EXECUTE_FALLBACK_READ_TIMEOUT = 930.0
"""Read timeout of `POST /execute` when the caller gave no `timeout`: 300 s run + 600 s startup + 30 s."""
LONG_POLL_READ_MARGIN = 30.0
CORRELATION_HEADER = "X-Correlation-ID"


@dataclass(frozen=True)
class ClientConfig:
    """How a client reaches the server and how patiently it retries."""

    base_url: str = DEFAULT_BASE_URL
    timeout: float = 30.0
    """Read timeout of ordinary calls (long-polls and sync executions get their own)."""
    connect_timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    """Sent verbatim on every request, e.g. `{"X-API-Key": ...}`."""
    correlation_id: str | None = None
    """A fixed `X-Correlation-ID`; by default every call gets a fresh one (kept across its retries)."""
    max_retries: int = 2
    """Retries after the first attempt, for calls that are safe to repeat (3 attempts in all)."""
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 60.0
    """A server's `Retry-After` hint is honoured up to this many seconds."""

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValidationError("timeout and connect_timeout must be positive numbers of seconds")
        if self.max_retries < 0:
            raise ValidationError("max_retries must be >= 0")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValidationError(f"base_url must start with http:// or https://, got {self.base_url!r}")


def make_config(
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = 30,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float = 10.0,
    correlation_id: str | None = None,
    *,
    api_key: str | None = None,
    max_retries: int = 2,
) -> ClientConfig:
    """Build a `ClientConfig` from the keyword arguments `configure()` and the clients accept."""
    merged = dict(headers or {})
    if api_key is not None:
        merged["X-API-Key"] = api_key
    return ClientConfig(
        base_url=base_url.rstrip("/"),
        timeout=float(timeout),
        connect_timeout=float(connect_timeout),
        headers=merged,
        correlation_id=correlation_id,
        max_retries=max_retries,
    )


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API operation, ready to be sent by either client."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str | int | float] | None = None
    body: Mapping[str, Any] | None = None
    read_timeout: float | None = None
    """None = the client's configured `timeout`."""
    retryable: bool = False
    """Safe to repeat after a transport error or a 502/503/504 (reads, and keyed submits)."""
    correlation_id: str | None = None
    """Overrides the configured `X-Correlation-ID` for this call."""
    headers: Mapping[str, str] | None = None
    """Extra request headers of this call (e.g. a session call's `Idempotency-Key`)."""

    def with_correlation(self, correlation_id: str | None) -> Call[T]:
        return dataclasses.replace(self, correlation_id=correlation_id) if correlation_id else self

    def with_parser(self, parse: Callable[[httpx.Response], U]) -> Call[U]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "parse"}
        return Call(parse=parse, **fields)


# ---------------------------------------------------------------------------------------------
# Requests


def request_headers(config: ClientConfig, call: Call[Any]) -> dict[str, str]:
    """Headers for one logical call; the same dict is reused on each of its retries."""
    headers = {"User-Agent": f"tako-vm-sdk/{__version__}", "Accept": "application/json"}
    headers.update(config.headers)
    headers[CORRELATION_HEADER] = call.correlation_id or config.correlation_id or str(uuid.uuid4())
    headers.update(call.headers or {})
    return headers


def build_timeout(config: ClientConfig, call: Call[Any]) -> httpx.Timeout:
    read = call.read_timeout if call.read_timeout is not None else config.timeout + 10.0
    return httpx.Timeout(read, connect=config.connect_timeout)


def build_request(
    client: httpx.Client | httpx.AsyncClient,
    config: ClientConfig,
    call: Call[Any],
    headers: Mapping[str, str],
) -> httpx.Request:
    """The httpx request for `call` (building a request does no I/O for either client type)."""
    return client.build_request(
        call.method,
        config.base_url + call.path,
        params=dict(call.params) if call.params else None,
        json=dict(call.body) if call.body is not None else None,
        headers=dict(headers),
        timeout=build_timeout(config, call),
    )


# ---------------------------------------------------------------------------------------------
# Retry policy


def backoff_delay(config: ClientConfig, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff `base * 2^attempt` capped at `backoff_max`, minus up to 25 % jitter."""
    rand = (rng or random).random()
    return min(config.backoff_base * (2**attempt), config.backoff_max) * (1.0 - 0.25 * rand)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header given as a number (HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def retry_delay(
    config: ClientConfig,
    call: Call[Any],
    attempt: int,
    response: httpx.Response | None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None to stop and report the outcome.

    `response` is None after a transport error. Transport errors and 502/503/504 are retried only
    for calls marked `retryable`; 429 is retried for any call, because a rate-limited request was
    refused before the server acted on it.
    """
    if attempt >= config.max_retries:
        return None
    if response is None:
        return backoff_delay(config, attempt, rng) if call.retryable else None
    status = response.status_code
    if status == 429 or (call.retryable and status in RETRYABLE_STATUSES):
        hint = parse_retry_after(response.headers.get("Retry-After"))
        if hint is not None:
            return min(hint, config.retry_after_max)
        return backoff_delay(config, attempt, rng)
    return None


# ---------------------------------------------------------------------------------------------
# Responses


_CLIENT_ERRORS: dict[int, type[ClientError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: WaitTimeoutError,
    409: ConflictError,
    410: SessionEndedError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
}


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def error_detail(response: httpx.Response) -> str:
    """The `detail` of an error body as a string (422 list details are JSON-encoded)."""
    body = _json_or_none(response)
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    text = response.text.strip()
    return text or response.reason_phrase or "error"


def api_error(response: httpx.Response) -> APIError:
    """Map an HTTP error answer to the matching exception."""
    status = response.status_code
    detail = error_detail(response)
    body = _json_or_none(response)
    correlation_id = None
    if isinstance(body, dict) and isinstance(body.get("correlation_id"), str):
        correlation_id = body["correlation_id"]
    correlation_id = correlation_id or response.headers.get(CORRELATION_HEADER)
    if status == 429:
        return RateLimitError(
            status,
            detail,
            correlation_id=correlation_id,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status >= 500:
        return InternalServerError(status, detail, correlation_id=correlation_id)
    return _CLIENT_ERRORS.get(status, ClientError)(status, detail, correlation_id=correlation_id)


def transport_error(call: Call[Any], headers: Mapping[str, str], exc: Exception) -> TransportError:
    """The SDK error for a request that got no HTTP answer (a timeout is an `APITimeoutError`)."""
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return cls(
        f"{call.method} {call.path} failed: {type(exc).__name__}: {exc}",
        correlation_id=headers.get(CORRELATION_HEADER),
    )


def parse_json(response: httpx.Response) -> Any:
    body = _json_or_none(response)
    if body is None and response.content.strip() not in (b"null",):
        raise MalformedResponseError(
            f"expected a JSON body from {response.request.method} {response.request.url.path}, "
            f"got {response.text[:200]!r}",
            correlation_id=response.headers.get(CORRELATION_HEADER),
        )
    return body


def _parse_json_as(response: httpx.Response, kind: type, name: str) -> Any:
    body = parse_json(response)
    if not isinstance(body, kind):
        raise MalformedResponseError(
            f"expected a JSON {name} from {response.request.url.path}, got {type(body).__name__}",
            correlation_id=response.headers.get(CORRELATION_HEADER),
        )
    return body


def parse_object(response: httpx.Response) -> dict[str, Any]:
    return _parse_json_as(response, dict, "object")


def parse_list(response: httpx.Response) -> list[Any]:
    return _parse_json_as(response, list, "list")


def parse_job_id(response: httpx.Response) -> str:
    body = parse_object(response)
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise MalformedResponseError(
            f"response to {response.request.url.path} has no job_id: {body!r:.200}",
            correlation_id=response.headers.get(CORRELATION_HEADER),
        )
    return job_id


def parse_bytes(response: httpx.Response) -> bytes:
    return response.content


# ---------------------------------------------------------------------------------------------
# Calls: one builder per operation


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what} must be a non-empty string, got {value!r}")
    return quote(value, safe="")


def _without_none(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def new_idempotency_key() -> str:
    """A fresh key for one logical submission (`sdk-` + 32 hex digits, as 0.3.0 makes them)."""
    return f"sdk-{uuid.uuid4().hex}"


def _check_input(input_data: Mapping[str, Any] | None) -> dict[str, Any]:
    if input_data is None:
        return {}
    if not isinstance(input_data, Mapping):
        raise ValidationError(f"input_data must be a JSON object (a dict), got {type(input_data).__name__}")
    return dict(input_data)


def _check_requirements(requirements: Sequence[str] | None) -> list[str] | None:
    if requirements is None:
        return None
    if isinstance(requirements, str) or not all(isinstance(item, str) for item in requirements):
        raise ValidationError("requirements must be a list of pip requirement strings, e.g. ['numpy>=1.26']")
    return list(requirements)


@dataclass(frozen=True)
class Job:
    """What to run: the fields `POST /execute` and `POST /execute/async` share, checked on creation."""

    code: str
    input_data: Mapping[str, Any] | None = None
    timeout: int | None = None
    startup_timeout: int | None = None
    job_type: str | None = None
    requirements: Sequence[str] | None = None
    webhook_url: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.code, str):
            raise ValidationError(f"code must be a string, got {type(self.code).__name__}")
        object.__setattr__(self, "input_data", _check_input(self.input_data))
        object.__setattr__(self, "requirements", _check_requirements(self.requirements))

    def body(self, **extra: Any) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _without_none(**fields, **extra)


def submit_call(job: Job, idempotency_key: str | None = None) -> Call[str]:
    """`POST /execute/async`. Always carries an idempotency key, so retries can never run code twice."""
    body = job.body(idempotency_key=idempotency_key or new_idempotency_key())
    return Call("POST", "/execute/async", parse_job_id, body=body, retryable=True)


def execute_call(job: Job) -> Call[dict[str, Any]]:
    """`POST /execute` (run and wait). Never retried: the sync route has no idempotency."""
    if job.timeout is None:
        read_timeout = SYNC_EXECUTE_FALLBACK_READ_TIMEOUT
    else:
        read_timeout = job.timeout + (job.startup_timeout or 600) + LONG_POLL_READ_MARGIN
    return Call("POST", "/execute", parse_object, body=job.body(), read_timeout=read_timeout)


def status_call(job_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/jobs/{_segment(job_id, 'job_id')}", parse_object, retryable=True)


def server_wait(remaining: float) -> float:
    """One long-poll's `timeout` for a caller with `remaining` seconds left (1..300)."""
    return max(MIN_SERVER_WAIT_SECONDS, min(remaining, MAX_SERVER_WAIT_SECONDS))


def result_call(job_id: str, *, wait: float | None = None, view: str | None = None) -> Call[dict[str, Any]]:
    """`GET /jobs/{id}/result`; with `wait` it long-polls the server for up to `wait` seconds."""
    params: dict[str, str | int | float] = {}
    read_timeout = None
    if wait:
        seconds = server_wait(wait)
        params.update(wait="true", timeout=seconds)
        read_timeout = seconds + LONG_POLL_READ_MARGIN
    if view is not None:
        params["view"] = view
    return Call(
        "GET",
        f"/jobs/{_segment(job_id, 'job_id')}/result",
        parse_object,
        params=params or None,
        read_timeout=read_timeout,
        retryable=True,
    )


def cancel_call(job_id: str) -> Call[dict[str, Any]]:
    return Call("POST", f"/jobs/{_segment(job_id, 'job_id')}/cancel", parse_object)


def rerun_call(job_id: str, *, job_type: str | None = None, timeout: int | None = None) -> Call[str]:
    body = _without_none(job_type=job_type, timeout=timeout)
    return Call("POST", f"/jobs/{_segment(job_id, 'job_id')}/rerun", parse_job_id, body=body)


def fork_call(
    job_id: str, code: str, *, job_type: str | None = None, timeout: int | None = None
) -> Call[str]:
    if not isinstance(code, str):
        raise ValidationError(f"code must be a string, got {type(code).__name__}")
    body = _without_none(code=code, job_type=job_type, timeout=timeout)
    return Call("POST", f"/jobs/{_segment(job_id, 'job_id')}/fork", parse_job_id, body=body)


def artifact_call(job_id: str, artifact_name: str) -> Call[bytes]:
    path = f"/jobs/{_segment(job_id, 'job_id')}/artifacts/{_segment(artifact_name, 'artifact_name')}"
    return Call("GET", path, parse_bytes, retryable=True)


def list_executions_call(
    *,
    status: str | None = None,
    job_type: str | None = None,
    limit: int = 50,
    offset: int = 0,
    view: str | None = None,
) -> Call[dict[str, Any]]:
    params: dict[str, str | int | float] = _without_none(
        status=status, job_type=job_type, limit=limit, offset=offset, view=view
    )
    return Call("GET", "/executions", parse_object, params=params, retryable=True)


def execution_call(execution_id: str, *, view: str | None = None) -> Call[dict[str, Any]]:
    params: dict[str, str | int | float] | None = {"view": view} if view is not None else None
    path = f"/executions/{_segment(execution_id, 'execution_id')}"
    return Call("GET", path, parse_object, params=params, retryable=True)


def health_call() -> Call[dict[str, Any]]:
    return Call("GET", "/health", parse_object, read_timeout=QUICK_CALL_READ_TIMEOUT, retryable=True)


def pool_stats_call() -> Call[dict[str, Any]]:
    return Call("GET", "/pool/stats", parse_object, read_timeout=QUICK_CALL_READ_TIMEOUT, retryable=True)


def dlq_stats_call() -> Call[dict[str, Any]]:
    return Call("GET", "/dlq/stats", parse_object, read_timeout=QUICK_CALL_READ_TIMEOUT, retryable=True)


def list_job_types_call() -> Call[list[Any]]:
    return Call("GET", "/job-types", parse_list, retryable=True)


def job_type_call(name: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/job-types/{_segment(name, 'name')}", parse_object, retryable=True)


def build_job_type_call(name: str) -> Call[dict[str, Any]]:
    return Call("POST", f"/job-types/{_segment(name, 'name')}/build", parse_object)


# ---------------------------------------------------------------------------------------------
# The engine: plans of calls -> steps the clients perform

Plan: TypeAlias = Generator[Call[Any], Any, T]
"""An operation: yields the `Call`s it needs, receives each parsed result (or its error, thrown
in), and returns the operation's value. Written once in `tako_vm._operations` for every surface."""


@dataclass(frozen=True)
class Send:
    """Send `call` once with these headers (the same dict on every retry: one correlation id)."""

    call: Call[Any]
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


Step: TypeAlias = Send | Sleep
Outcome: TypeAlias = httpx.Response | httpx.RequestError | None
"""What a client sends back after a step: the answer or the httpx error of a `Send`, None after `Sleep`."""
Steps: TypeAlias = Generator[Step, Outcome, T]


def attempts(config: ClientConfig, call: Call[T]) -> Steps[T]:
    """Send `call` until it succeeds or `retry_delay` says stop; the parsed answer, else the typed error."""
    headers = request_headers(config, call)
    attempt = 0
    while True:
        outcome = yield Send(call, headers)
        if isinstance(outcome, httpx.Response):
            if outcome.is_success:
                return call.parse(outcome)
            delay = retry_delay(config, call, attempt, outcome)
            if delay is None:
                raise api_error(outcome)
        else:
            assert outcome is not None, "a Send step is answered with a response or an error"
            transient = isinstance(outcome, httpx.TransportError)
            delay = retry_delay(config, call, attempt, None) if transient else None
            if delay is None:
                raise transport_error(call, headers, outcome) from outcome
        yield Sleep(delay)
        attempt += 1


def steps(config: ClientConfig, plan: Plan[T]) -> Steps[T]:
    """Run an operation's plan: each `Call` it yields goes through `attempts`, and its result is
    sent back into the plan (an SDK error is thrown into it, so a plan may catch and go on)."""
    result: Any = None
    error: TakoVMError | None = None
    while True:
        try:
            call = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value
        try:
            result, error = (yield from attempts(config, call)), None
        except TakoVMError as exc:
            result, error = None, exc


def advance(running: Steps[T], outcome: Outcome) -> Step | Done[T]:
    """The next step of `running` after `outcome`, or `Done` with the operation's value."""
    try:
        return running.send(outcome)
    except StopIteration as stop:
        return Done(stop.value)
