"""The operator's one settings type (`Settings`) and its one environment parser (`settings_from_env`).

Pure data, no I/O: the bottom layer of the operator (every other module may import it; it imports no
other operator module). `Settings` groups the operator-wide knobs in sections: `pods` (what shapes the
built Pods, policies and status), `limits` (retries, TTL), `standby` (the standby-Pod pool), `restart`
(the in-process supervisor), and the process's own knobs (concurrency, caches, metrics, namespaces).
`settings_from_env` reads every TAKO_OPERATOR_* / TAKO_VM_* variable the Helm chart sets (see
docs/operator.md); nothing else in the operator reads the environment for a knob. Tests construct
`Settings` and its sections directly.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tako_operator.session_settings import SessionSettings, sessions_from_env

# Where a job Pod may never send traffic during the install phase: "this network", RFC 1918, carrier-grade
# NAT (which holds Alibaba's metadata 100.100.100.200), loopback, link-local (the cloud metadata address
# 169.254.169.254), Azure's platform endpoint, and the IPv6 equivalents: unique-local (AWS's fd00:ec2::254),
# link-local, loopback, IPv4-mapped and NAT64 prefixes (which could reach the IPv4 ranges above).
PRIVATE_IPV4_RANGES: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "168.63.129.16/32",
)
PRIVATE_IPV6_RANGES: tuple[str, ...] = (
    "fc00::/7",
    "fe80::/10",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
)


JSON_ESCAPE_FACTOR = 6  # a control byte becomes \u00XX in ASCII JSON
LOG_SLACK_BYTES = 1024 * 1024
MIN_LOG_BYTES = 64 * 1024


@dataclass(frozen=True)
class PodSettings:
    """Knobs for the built Pods, policies and status. Defaults are the secure, documented ones."""

    runtime_class_name: str | None = "gvisor"  # None only for clusters without gVisor (tests, kind smoke)
    run_as_user: int = 1000
    run_as_group: int = 1000
    # activeDeadlineSeconds = startup + timeout + this; also the operator's own bound on a job Pod
    deadline_grace_seconds: int = 30
    termination_grace_seconds: int = 5
    tmp_size_limit: str = "100Mi"
    output_size_limit: str = "64Mi"
    deps_size_limit: str = "1Gi"
    # caps the runner applies inside the sandbox (the contract's values)
    max_stdout_bytes: int = 65_536
    max_stderr_bytes: int = 65_536
    max_artifact_bytes: int = 10 * 1024 * 1024
    max_total_artifact_bytes: int = 50 * 1024 * 1024
    # how much of a container's log the operator reads (None: derived from the caps above, see
    # log_limit_bytes); the runner's envelope is the last thing in the log, so it reads the end
    max_log_bytes: int | None = None
    # caps for what lands in PythonJob.status (etcd budget, see docs/crds.md)
    status_stream_bytes: int = 8192
    status_output_bytes: int = 16_384
    # install-phase egress: DNS to these pods, HTTPS to public addresses only
    egress_probe: bool = True
    dns_namespace: str = "kube-system"
    dns_pod_labels: dict[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    install_egress_ipv6: bool = True
    extra_denied_cidrs: tuple[str, ...] = ()  # e.g. the cluster's own public node or service ranges
    # upper bounds for spec.resources overrides
    max_memory: str = "32Gi"
    min_memory: str = "64Mi"
    max_cpu: str = "16"
    min_cpu: str = "100m"

    def __post_init__(self) -> None:
        if self.run_as_user <= 0 or self.run_as_group <= 0:
            raise ValueError("run_as_user and run_as_group must be non-root (> 0)")
        if not 256 <= self.status_stream_bytes <= 16_000:
            raise ValueError("status_stream_bytes must be 256..16000 (the CRD allows 16384 characters)")
        if not 0 <= self.status_output_bytes <= 262_144:
            raise ValueError("status_output_bytes must be 0..262144")
        if self.deadline_grace_seconds < 0:
            raise ValueError("deadline_grace_seconds must be >= 0")
        if self.max_log_bytes is not None and self.max_log_bytes < MIN_LOG_BYTES:
            raise ValueError(
                f"max_log_bytes must be >= {MIN_LOG_BYTES} (the runner's envelope frame needs room)"
            )

    @property
    def log_limit_bytes(self) -> int:
        """The most bytes of a container's log the operator reads. By default the largest result
        envelope the runner can print under the job's caps: stdout and stderr (each byte at most 6
        characters once JSON-escaped) plus result.json (up to max_artifact_bytes), plus 1 MiB slack
        for the other envelope fields. 12,320,768 bytes with the default caps."""
        if self.max_log_bytes is not None:
            return self.max_log_bytes
        streams = JSON_ESCAPE_FACTOR * (self.max_stdout_bytes + self.max_stderr_bytes)
        return streams + self.max_artifact_bytes + LOG_SLACK_BYTES


@dataclass(frozen=True)
class Limits:
    """Operator-wide knobs that shape decisions (subset of the operator settings)."""

    max_attempts: int = 3
    retry_backoff_seconds: float = 5.0
    retry_backoff_max_seconds: float = 300.0
    default_ttl_seconds: int | None = 3600


@dataclass(frozen=True)
class StandbySettings:
    """Operator-wide knobs of the pool (the pool size itself is ``PythonJobType.spec.standbyPods``)."""

    port: int = 8790
    # A standby Pod lives at most this long unclaimed (its activeDeadlineSeconds); then it is replaced.
    max_age_seconds: int = 86_400
    # Who may push: the operator's Pods (namespace + labels). No labels = nobody (fail closed).
    operator_namespace: str | None = None
    operator_pod_labels: dict[str, str] = field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "tako-vm",
            "app.kubernetes.io/component": "operator",
        }
    )
    push_timeout_seconds: float = 10.0
    # Every pool is compared with its job type this often besides on events: a refill that failed
    # (API error, quota) is retried without waiting for the next event.
    resync_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65_535:
            raise ValueError(f"standby port must be 1..65535, got {self.port}")
        if self.max_age_seconds < 60:
            raise ValueError(f"standby max_age_seconds must be >= 60, got {self.max_age_seconds}")
        if self.push_timeout_seconds <= 0:
            raise ValueError("standby push_timeout_seconds must be > 0")
        if not 0.1 <= self.resync_seconds <= 86_400:
            raise ValueError(f"standby resync_seconds must be 0.1..86400, got {self.resync_seconds}")


@dataclass(frozen=True)
class RestartPolicy:
    """How `operate` restarts a kopf reactor that failed (see the module docstring)."""

    backoff_seconds: float = 1.0  # the first restart delay; doubles per consecutive failure
    backoff_max_seconds: float = 30.0
    max_consecutive_failures: int = 10  # then the error propagates and the process exits
    healthy_after_seconds: float = 120.0  # a run at least this long resets the failure count

    def __post_init__(self) -> None:
        if self.backoff_seconds < 0 or self.backoff_max_seconds < self.backoff_seconds:
            raise ValueError("restart backoff must be >= 0 and backoff_max_seconds >= backoff_seconds")
        if self.max_consecutive_failures < 0:
            raise ValueError("max_consecutive_failures must be >= 0")


@dataclass(frozen=True)
class WebhookSettings:
    """Completion webhooks (docs/operator.md "Completion webhooks"): the operator sends them.

    ``secret_name`` names a Secret in ``secret_namespace`` (default: the operator's own namespace) whose
    keys are job namespaces and whose values are Standard Webhooks secrets (``whsec_`` + base64); unset,
    no webhook is sent (each fails closed, saying so). ``allowlist``: CIDRs a webhook may reach although
    they are private/loopback/link-local (as the shim's ``webhook_allowlist``)."""

    secret_name: str | None = None
    secret_namespace: str | None = None
    allowlist: tuple[str, ...] = ()
    first_retry_seconds: float = 5.0
    max_retry_seconds: float = 3600.0
    retry_window_seconds: float = 86_400.0
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 10.0
    max_response_bytes: int = 65_536
    secret_cache_seconds: float = 10.0  # how long a read of the Secret is reused
    concurrency: int = 8  # attempts in flight at once

    def __post_init__(self) -> None:
        for entry in self.allowlist:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"TAKO_OPERATOR_WEBHOOK_ALLOWLIST: {entry!r} must be an IP address or CIDR"
                ) from None
        if not 0.01 <= self.first_retry_seconds <= self.max_retry_seconds:
            raise ValueError("webhook first retry must be >= 0.01 s and <= the max retry delay")
        if not 1 <= self.retry_window_seconds <= 30 * 86_400:
            raise ValueError("TAKO_OPERATOR_WEBHOOK_RETRY_WINDOW_SECONDS must be from 1 to 2592000")
        if not (0 < self.connect_timeout_seconds <= 60 and 0 < self.read_timeout_seconds <= 300):
            raise ValueError("webhook timeouts must be > 0 (connect <= 60 s, read <= 300 s)")
        if not 0 <= self.max_response_bytes <= 10_485_760:
            raise ValueError("TAKO_OPERATOR_WEBHOOK_MAX_RESPONSE_BYTES must be from 0 to 10485760")


DEFAULT_JOB_CACHE_ENTRIES = 256
DEFAULT_API_CONCURRENCY = 16
MAX_API_CONCURRENCY = 256
NAMESPACES_ENV = "TAKO_OPERATOR_NAMESPACES"
JOB_CACHE_ENV = "TAKO_OPERATOR_JOB_CACHE_ENTRIES"
API_CONCURRENCY_ENV = "TAKO_OPERATOR_API_CONCURRENCY"


@dataclass
class Settings:
    """Every operator-wide knob (the one settings type; `settings_from_env` fills it)."""

    max_concurrent: int = 10
    limits: Limits = field(default_factory=Limits)
    pods: PodSettings = field(default_factory=PodSettings)
    default_image: str | None = None  # image of the built-in `default` job type
    # retrying a pass that met a transient API error: the first delay, doubling up to the cap
    api_retry_backoff_seconds: float = 0.5
    api_retry_backoff_max_seconds: float = 30.0
    # bodies of PythonJobs kept in memory so that a pass needs no GET (least recently used dropped)
    job_cache_entries: int = DEFAULT_JOB_CACHE_ENTRIES
    # The standby-Pod pool's operator-wide knobs (TAKO_OPERATOR_STANDBY_*); pool sizes are per job type.
    standby: StandbySettings = field(default_factory=StandbySettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)  # PythonSessions (session_settings.py)
    # API calls in flight at once (threads and pooled keep-alive connections)
    api_concurrency: int = DEFAULT_API_CONCURRENCY
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    metrics_port: int | None = None  # serve Prometheus metrics on this port (None: off)
    # the watch scope when no flag gives one: TAKO_OPERATOR_NAMESPACES (names, or ("*",) for all)
    namespaces: tuple[str, ...] = ()
    pod_namespace: str | None = None  # $POD_NAMESPACE: the operator's own namespace

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError("TAKO_OPERATOR_MAX_CONCURRENT_JOBS must be >= 1")
        if not 1 <= self.api_concurrency <= MAX_API_CONCURRENCY:
            raise ValueError(f"{API_CONCURRENCY_ENV} must be from 1 to {MAX_API_CONCURRENCY}")


Env = Mapping[str, str]


def _number(env: Env, name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return value


def _whole(env: Env, name: str, what: str, maximum: int | None = None) -> int | None:
    """A whole number >= 0 (None when unset), or a ValueError naming the variable and the limit."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or (maximum is not None and int(raw) > maximum):
        bound = f"a whole number from 0 to {maximum}" if maximum is not None else f"a whole number of {what}"
        raise ValueError(f"{name} must be {bound}, got {raw!r}")
    return int(raw)


def _seconds(env: Env, name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"{name} must be between 0 and 3600 seconds, got {raw!r}")
    return value


def _limits(env: Env) -> Limits:
    ttl_raw = env.get("TAKO_OPERATOR_DEFAULT_TTL_SECONDS", "3600")
    return Limits(
        max_attempts=int(_number(env, "TAKO_OPERATOR_MAX_ATTEMPTS", 3)) or 1,
        retry_backoff_seconds=_number(env, "TAKO_OPERATOR_RETRY_BACKOFF_SECONDS", 5.0),
        retry_backoff_max_seconds=_number(env, "TAKO_OPERATOR_RETRY_BACKOFF_MAX_SECONDS", 300.0),
        default_ttl_seconds=None
        if ttl_raw in ("", "none")
        else int(_number(env, "TAKO_OPERATOR_DEFAULT_TTL_SECONDS", 3600)),
    )


def _pods(env: Env) -> PodSettings:
    """The chart sets TAKO_VM_RUNTIME_CLASS_NAME. TAKO_OPERATOR_MAX_LOG_BYTES (unset: derived from the
    job caps) bounds how much of a Pod's log the operator reads. TAKO_OPERATOR_DEADLINE_GRACE_SECONDS
    is the one deadline knob: a job Pod's activeDeadlineSeconds is startup timeout + timeout + this,
    and the operator ends a Pod still running then itself."""
    runtime_class = env.get("TAKO_VM_RUNTIME_CLASS_NAME", "gvisor").strip()
    grace_raw = env.get("TAKO_OPERATOR_DEADLINE_GRACE_SECONDS", "").strip()
    if grace_raw and not grace_raw.isdigit():
        raise ValueError(
            f"TAKO_OPERATOR_DEADLINE_GRACE_SECONDS must be a whole number of seconds >= 0, got {grace_raw!r}"
        )
    max_log = _whole(env, "TAKO_OPERATOR_MAX_LOG_BYTES", "bytes")
    return PodSettings(
        runtime_class_name=runtime_class or None,
        max_log_bytes=max_log,
        deadline_grace_seconds=int(grace_raw) if grace_raw else PodSettings.deadline_grace_seconds,
    )


def _standby(env: Env) -> StandbySettings:
    """TAKO_OPERATOR_STANDBY_*: port, max age, resync interval, who may push."""
    labels_raw = env.get("TAKO_OPERATOR_STANDBY_PUSH_FROM_LABELS")
    kwargs: dict[str, Any] = {}
    if env.get("TAKO_OPERATOR_STANDBY_PORT"):
        kwargs["port"] = int(env["TAKO_OPERATOR_STANDBY_PORT"])
    if env.get("TAKO_OPERATOR_STANDBY_MAX_AGE_SECONDS"):
        kwargs["max_age_seconds"] = int(env["TAKO_OPERATOR_STANDBY_MAX_AGE_SECONDS"])
    if env.get("TAKO_OPERATOR_STANDBY_RESYNC_SECONDS"):
        raw = env["TAKO_OPERATOR_STANDBY_RESYNC_SECONDS"]
        try:
            kwargs["resync_seconds"] = float(raw)
        except ValueError:
            raise ValueError(
                f"TAKO_OPERATOR_STANDBY_RESYNC_SECONDS must be a number of seconds, got {raw!r}"
            ) from None
    if env.get("TAKO_OPERATOR_STANDBY_PUSH_FROM_NAMESPACE"):
        kwargs["operator_namespace"] = env["TAKO_OPERATOR_STANDBY_PUSH_FROM_NAMESPACE"]
    if labels_raw is not None:
        pairs = [item.split("=", 1) for item in labels_raw.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"TAKO_OPERATOR_STANDBY_PUSH_FROM_LABELS must be k=v,k=v; got {labels_raw!r}")
        kwargs["operator_pod_labels"] = {k.strip(): v.strip() for k, v in pairs}
    return StandbySettings(**kwargs)


def _restart(env: Env) -> RestartPolicy:
    """TAKO_OPERATOR_RESTART_BACKOFF_SECONDS (first delay) and ..._MAX_SECONDS (the cap)."""
    defaults = RestartPolicy()
    first = _seconds(env, "TAKO_OPERATOR_RESTART_BACKOFF_SECONDS", defaults.backoff_seconds)
    cap = _seconds(env, "TAKO_OPERATOR_RESTART_BACKOFF_MAX_SECONDS", max(first, defaults.backoff_max_seconds))
    if cap < first:
        raise ValueError(
            "TAKO_OPERATOR_RESTART_BACKOFF_MAX_SECONDS must be >= TAKO_OPERATOR_RESTART_BACKOFF_SECONDS"
        )
    return RestartPolicy(backoff_seconds=first, backoff_max_seconds=cap)


def _webhooks(env: Env) -> WebhookSettings:
    """TAKO_OPERATOR_WEBHOOK_*: the Secret, the allowlist, the retry schedule and the attempt bounds."""
    d = WebhookSettings()
    first = _number(env, "TAKO_OPERATOR_WEBHOOK_FIRST_RETRY_SECONDS", d.first_retry_seconds)
    return WebhookSettings(
        secret_name=env.get("TAKO_OPERATOR_WEBHOOK_SECRET_NAME", "").strip() or None,
        secret_namespace=env.get("TAKO_OPERATOR_WEBHOOK_SECRET_NAMESPACE", "").strip() or None,
        allowlist=tuple(
            e.strip() for e in env.get("TAKO_OPERATOR_WEBHOOK_ALLOWLIST", "").split(",") if e.strip()
        ),
        first_retry_seconds=first,
        max_retry_seconds=_number(
            env, "TAKO_OPERATOR_WEBHOOK_MAX_RETRY_SECONDS", max(first, d.max_retry_seconds)
        ),
        retry_window_seconds=_number(
            env, "TAKO_OPERATOR_WEBHOOK_RETRY_WINDOW_SECONDS", d.retry_window_seconds
        ),
        connect_timeout_seconds=_number(
            env, "TAKO_OPERATOR_WEBHOOK_CONNECT_TIMEOUT_SECONDS", d.connect_timeout_seconds
        ),
        read_timeout_seconds=_number(
            env, "TAKO_OPERATOR_WEBHOOK_READ_TIMEOUT_SECONDS", d.read_timeout_seconds
        ),
        max_response_bytes=int(
            _number(env, "TAKO_OPERATOR_WEBHOOK_MAX_RESPONSE_BYTES", d.max_response_bytes)
        ),
    )


def settings_from_env(env: Env | None = None) -> Settings:
    """The operator's settings from TAKO_OPERATOR_* / TAKO_VM_* variables (default: os.environ)."""
    env = os.environ if env is None else env
    api_raw = env.get(API_CONCURRENCY_ENV, "").strip()
    if api_raw and (not api_raw.isdigit() or not 1 <= int(api_raw) <= MAX_API_CONCURRENCY):
        raise ValueError(
            f"{API_CONCURRENCY_ENV} must be a whole number from 1 to {MAX_API_CONCURRENCY}, got {api_raw!r}"
        )
    metrics_raw = env.get("TAKO_VM_METRICS_PORT", "").strip()
    raw_namespaces = env.get(NAMESPACES_ENV, "").strip()
    job_cache = _whole(env, JOB_CACHE_ENV, "entries", 1_000_000)
    return Settings(
        max_concurrent=int(_number(env, "TAKO_OPERATOR_MAX_CONCURRENT_JOBS", 10)),
        limits=_limits(env),
        pods=_pods(env),
        default_image=env.get("TAKO_VM_DEFAULT_JOB_IMAGE") or None,
        job_cache_entries=DEFAULT_JOB_CACHE_ENTRIES if job_cache is None else job_cache,
        standby=_standby(env),
        sessions=sessions_from_env(env),
        api_concurrency=int(api_raw) if api_raw else DEFAULT_API_CONCURRENCY,
        restart=_restart(env),
        webhooks=_webhooks(env),
        metrics_port=int(metrics_raw) if metrics_raw.isdigit() else None,
        namespaces=("*",)
        if raw_namespaces == "*"
        else tuple(ns.strip() for ns in raw_namespaces.split(",") if ns.strip()),
        pod_namespace=(env.get("POD_NAMESPACE") or "").strip() or None,
    )


@dataclass(frozen=True)
class Scope:
    """What the operator watches: every namespace, or these namespaces (literal names or globs)."""

    clusterwide: bool
    namespaces: tuple[str, ...] = ()

    @property
    def needs_scanning(self) -> bool:
        """Only globs ('team-*', '!kube-system') need kopf to list and watch Namespaces cluster-wide;
        literal names and the all-namespaces mode need no namespace scanning (nor RBAC for it)."""
        return not self.clusterwide and any("*" in ns or "!" in ns for ns in self.namespaces)


def resolve_scope(
    namespaces: list[str] | None, all_namespaces: bool, settings: Settings, own_namespace: str | None
) -> Scope:
    """The watch scope: the flags win; without them TAKO_OPERATOR_NAMESPACES (the chart sets it:
    comma-separated names, or `*` for every namespace); without that, the operator's own namespace
    ($POD_NAMESPACE, the service account's or the kubeconfig context's namespace)."""
    if all_namespaces:
        return Scope(clusterwide=True)
    if namespaces:
        return Scope(clusterwide=False, namespaces=tuple(namespaces))
    if settings.namespaces == ("*",):
        return Scope(clusterwide=True)
    if settings.namespaces:
        return Scope(clusterwide=False, namespaces=settings.namespaces)
    own = settings.pod_namespace or own_namespace
    if not own:
        raise ValueError(f"give --namespace (repeatable), --all-namespaces or {NAMESPACES_ENV}")
    return Scope(clusterwide=False, namespaces=(own,))
