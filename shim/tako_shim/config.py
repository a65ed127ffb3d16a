"""Server configuration: ``tako_vm.yaml`` plus ``TAKO_VM_<KEY>`` environment overrides.

``load_settings`` is the only entry point. It reads the file (``--config``, else ``$TAKO_VM_CONFIG``,
else ``./tako_vm.yaml`` if present, else built-in defaults), applies environment overrides and
validates everything at once; any problem raises ``ConfigError`` whose message names the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tako_vm.delivery.state import secret_problem

ENV_PREFIX = "TAKO_VM_"
DEFAULT_TENANT = "default"
_MEMORY_RE = re.compile(r"^([1-9][0-9]*)([mg])$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TENANT_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


def memory_limit_mb(value: str) -> int:
    """``"512m"`` -> 512, ``"2g"`` -> 2048."""
    match = _MEMORY_RE.match(value)
    if not match:
        raise ValueError(f"memory_limit {value!r} must look like '512m' or '2g'")
    amount, unit = int(match.group(1)), match.group(2)
    return amount * 1024 if unit == "g" else amount


class JobTypeConfig(BaseModel):
    """A pre-built environment a request selects with ``job_type``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    requirements: list[str] = Field(default_factory=list, max_length=50)
    image: str | None = None  # container image (kubernetes backend); local runs use the host python
    python_version: str = "3.11"
    memory_limit: str = "512m"
    cpu_limit: float = Field(default=1.0, ge=0.1, le=16)
    timeout: int | None = Field(default=None, ge=1, le=86400)  # None: the server's default_timeout
    startup_timeout: int = Field(default=120, ge=10, le=600)
    environment: dict[str, str] = Field(default_factory=dict)
    network_enabled: bool = False  # only the install phase ever gets egress; user code never does
    # Modules the job type's snapshot template imports before any job (None: the runner's own imports).
    preload: list[str] | None = Field(default=None, max_length=50)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be 1-64 characters of [a-zA-Z0-9_-]")
        return value

    @field_validator("preload")
    @classmethod
    def _preload(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if not _MODULE_RE.match(name):
                raise ValueError(f"preload entry {name!r} is not a module name (like pandas or numpy.linalg)")
        return value

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str) -> str:
        mb = memory_limit_mb(value)
        if not 64 <= mb <= 32 * 1024:
            raise ValueError("must be between 64m and 32g")
        return value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"environment variable name {key!r} is not a POSIX name")
            if any(ord(ch) < 32 for ch in item):
                raise ValueError(f"environment variable {key!r} contains control characters")
        return value


class KubernetesOptions(BaseModel):
    """Options of the ``kubernetes`` backend."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "tako-vm"  # namespace of the "default" tenant
    tenant_namespaces: dict[str, str] = Field(default_factory=dict)  # tenant -> namespace (else tenant)
    kubeconfig: str | None = None
    in_cluster: bool = False


class Settings(BaseModel):
    """Every configuration key, its default and its bounds."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backend: Literal["local", "kubernetes"] = "local"
    production_mode: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    server_host: str = "127.0.0.1"
    server_port: int = Field(default=8000, ge=0, le=65535)  # 0 = any free port
    allow_unauthenticated_network_access: bool = False
    # Connection hardening (tako_shim/http/serving.py): slow or silent clients are dropped, the number of
    # open connections stays below the file-descriptor limit, excess connections get a 503.
    server_max_connections: int = Field(default=10_000, ge=16, le=1_000_000)
    server_header_timeout_seconds: float = Field(default=10.0, ge=1, le=300)
    server_body_timeout_seconds: float = Field(default=30.0, ge=1, le=600)
    # Browser guards (tako_shim/http/guards.py). Empty allowed hosts on a loopback bind: localhost,
    # 127.0.0.1 and [::1] (any port); on any other bind the Host header is not checked.
    server_allowed_hosts: list[str] = Field(default_factory=list, max_length=100)
    server_allowed_origins: list[str] = Field(default_factory=list, max_length=100)

    api_auth_enabled: bool = False
    api_keys: dict[str, str] = Field(default_factory=dict)  # key -> tenant; a YAML list maps to "default"
    api_auth_header: str = "X-API-Key"
    api_rate_limit_enabled: bool = True
    api_rate_limit_requests: int = Field(default=120, ge=1, le=100_000)
    api_rate_limit_window_seconds: int = Field(default=60, ge=1, le=3600)
    api_max_payload_bytes: int = Field(default=2_097_152, ge=1024, le=104_857_600)

    security_mode: Literal["strict", "permissive"] = "strict"
    runsc_path: str | None = None
    rootfs_path: str | None = None  # the sandboxes' system root (default: `make setup`'s build)
    warm_pool_size: int = Field(default=2, ge=0, le=32)  # pre-started sandboxes (0 disables)
    # The pool is sized by demand: empty until a job arrives, emptied after this long without one (an
    # idle sandbox burns ~2.5% of a core; an idle server must stay idle).
    warm_pool_idle_seconds: float = Field(default=60.0, ge=1.0, le=86_400.0)
    # Unset: on for a server bound to loopback outside production_mode (a developer's own machine, where
    # an agent's `requirements: ["numpy"]` should just work), off otherwise. Installs run in a separate
    # sandbox with egress; the code's sandbox never has network.
    allow_runtime_requirements: bool = False
    # Installed requirement sets are cached (backends/local/reqcache.py): size bound (0: install per job),
    # and whether tenants share entries (default: each tenant has its own).
    requirements_cache_max_mb: int = Field(default=4096, ge=0, le=1_048_576)
    requirements_cache_shared: bool = False
    # Template snapshots (backends/local/sandbox/snapshots.py): jobs run in fresh restores of a checkpointed
    # sandbox that already imported the job type's preload modules; images are rebuilt after this age.
    snapshots_enabled: bool = True
    snapshot_max_age_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    # Jobs running at once. Unset or empty: derived from the machine (``derived_max_workers``).
    max_workers: int = Field(default_factory=lambda: machine_max_workers(), ge=1, le=64)
    max_queue_size: int = Field(default=100, ge=1, le=10_000)
    # Per-tenant caps (None: half the queue, and all workers but one, when API keys name more than one
    # tenant; no cap for a single tenant). Fair scheduling across tenants applies either way.
    tenant_max_queued_jobs: int | None = Field(default=None, ge=1, le=10_000)
    tenant_max_running_jobs: int | None = Field(default=None, ge=1, le=64)
    tenant_storage_quota_bytes: int = Field(default=2_147_483_648, ge=1024, le=1 << 50)
    max_retry_attempts: int = Field(default=2, ge=1, le=10)
    default_timeout: int = Field(default=30, ge=1, le=3600)
    max_timeout: int = Field(default=300, ge=1, le=86400)
    default_startup_timeout: int = Field(default=120, ge=10, le=600)
    max_stdout_bytes: int = Field(default=65536, ge=1024, le=104_857_600)
    max_stderr_bytes: int = Field(default=65536, ge=1024, le=104_857_600)
    max_artifact_bytes: int = Field(default=10_485_760, ge=1024, le=1_073_741_824)
    max_total_artifacts_bytes: int = Field(default=52_428_800, ge=1024, le=10_737_418_240)
    max_artifact_count: int = Field(default=1000, ge=1, le=100_000)
    list_inline_output_bytes: int = Field(default=16_384, ge=0, le=104_857_600)
    list_max_response_bytes: int = Field(default=8_388_608, ge=65_536, le=1_073_741_824)
    execution_record_ttl_days: int = Field(default=30, ge=1, le=3650)
    data_dir: Path = Field(default_factory=lambda: _default_data_dir())
    # Completion webhooks (tako_shim/webhooks/, docs/api.md "Completion webhooks").
    webhook_secrets: dict[str, str] = Field(default_factory=dict)  # tenant -> "whsec_<base64>"
    webhook_default_urls: dict[str, str] = Field(default_factory=dict)  # tenant -> URL used when none given
    webhook_allowlist: list[str] = Field(default_factory=list, max_length=100)  # CIDRs allowed despite policy
    webhook_retry_window_seconds: float = Field(default=86_400, ge=1, le=30 * 86_400)
    webhook_first_retry_seconds: float = Field(default=5.0, ge=0.01, le=3600)
    webhook_max_retry_seconds: float = Field(default=3600.0, ge=0.01, le=86_400)
    webhook_connect_timeout_seconds: float = Field(default=5.0, ge=0.1, le=60)
    webhook_read_timeout_seconds: float = Field(default=10.0, ge=0.1, le=300)
    webhook_max_response_bytes: int = Field(default=65_536, ge=0, le=10_485_760)
    job_types: list[JobTypeConfig] = Field(default_factory=list)
    # Stateful sessions (docs/sessions.md): caps, and when an idle session is checkpointed to disk.
    session_max_per_tenant: int = Field(default=10, ge=1, le=10_000)
    session_max_ttl_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    session_max_memory_limit: str = "2g"
    session_interrupt_grace_seconds: int = Field(default=5, ge=1, le=300)
    session_pause_after_seconds: int | None = Field(default=300, ge=1, le=86_400)  # None: never pause
    session_tmp_size_mb: int = Field(default=256, ge=16, le=16_384)
    # kubernetes backend: the key session tokens are derived from (HMAC of it and the session's
    # namespace/name); every shim replica needs the same one. None: a random key per process.
    session_token_key: str | None = Field(default=None, min_length=32, max_length=512, repr=False)
    kubernetes: KubernetesOptions = Field(default_factory=KubernetesOptions)
    # The web console under /console (tako_shim/http/console, docs/console.md); None: on for a loopback bind.
    console_enabled: bool | None = None
    # GET /metrics: Prometheus metrics of this shim, without an API key like /health (docs/metrics.md).
    metrics_enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _runtime_requirements_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("allow_runtime_requirements") is None:
            host = data.get("server_host") or cls.model_fields["server_host"].default
            data = {**data, "allow_runtime_requirements": runtime_requirements_default(host, data)}
        return data

    @field_validator("max_workers", mode="before")
    @classmethod
    def _derived_max_workers(cls, value: Any) -> Any:
        """``max_workers:`` left empty in the file, or ``TAKO_VM_MAX_WORKERS=""``: derived."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return machine_max_workers()
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_to_tenants(cls, value: Any) -> Any:
        if isinstance(value, str):  # the env form: "key1,key2" or "key1=tenant-a,key2=tenant-b"
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list):
            mapped: dict[str, str] = {}
            for item in value:
                if not isinstance(item, str):
                    raise ValueError("each API key must be a string")
                key, sep, tenant = item.partition("=")
                mapped[key] = tenant if sep else DEFAULT_TENANT
            return mapped
        return value

    @field_validator("server_allowed_hosts", "server_allowed_origins", "webhook_allowlist", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # the env form: "a.example,b.example" (or "10.0.0.0/8,127.0.0.1/32")
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("server_allowed_hosts")
    @classmethod
    def _hosts_valid(cls, value: list[str]) -> list[str]:
        for host in value:
            if not re.match(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$", host):
                raise ValueError(f"{host!r} must be a host name or address, optionally with ':port'")
        return [host.lower() for host in value]

    @field_validator("server_allowed_origins")
    @classmethod
    def _origins_valid(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.match(r"^https?://[^/\s]+$", origin):
                raise ValueError(f"{origin!r} must look like 'https://console.example:8443' (no path)")
        return [origin.lower() for origin in value]

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secrets_valid(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant, secret in value.items():
            if secret_problem(secret):
                raise ValueError(f"secret of tenant {tenant!r}: {secret_problem(secret)}")
        return value

    @field_validator("webhook_allowlist")
    @classmethod
    def _webhook_allowlist_valid(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} must be an IP address or CIDR, e.g. 127.0.0.1/32") from None
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_valid(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tenant in value.items():
            if len(key) < 16:
                raise ValueError("each API key must be at least 16 characters")
            if any(ord(ch) < 33 or ord(ch) > 126 for ch in key):
                raise ValueError("API keys must be printable ASCII without spaces")
            if not _TENANT_RE.match(tenant):
                raise ValueError(f"tenant {tenant!r} must be a DNS label (it names a namespace)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.api_auth_enabled and not self.api_keys:
            raise ValueError("api_keys: api_auth_enabled is true but no API keys are configured")
        if self.default_timeout > self.max_timeout:
            raise ValueError(
                f"default_timeout: {self.default_timeout} exceeds max_timeout {self.max_timeout}"
            )
        names = [jt.name for jt in self.job_types]
        if len(names) != len(set(names)):
            raise ValueError("job_types: duplicate job type names")
        for jt in self.job_types:
            if jt.timeout is not None and jt.timeout > self.max_timeout:
                raise ValueError(
                    f"job_types.{jt.name}.timeout: {jt.timeout} exceeds max_timeout {self.max_timeout}"
                )
        if (
            not self.api_auth_enabled
            and not self.allow_unauthenticated_network_access
            and not is_loopback(self.server_host)
        ):
            raise ValueError(
                f"server_host: refusing to bind non-loopback address {self.server_host!r} without "
                "authentication; set api_auth_enabled and api_keys (or "
                "allow_unauthenticated_network_access: true)"
            )
        return self

    def console_on(self) -> bool:
        return self.console_enabled if self.console_enabled is not None else is_loopback(self.server_host)

    def tenant_caps(self) -> tuple[int, int]:
        """(queued, running) jobs one tenant may have at once, defaults applied."""
        shared = self.api_auth_enabled and len(set(self.api_keys.values())) > 1
        queued = self.tenant_max_queued_jobs or (
            max(1, self.max_queue_size // 2) if shared else self.max_queue_size
        )
        running = self.tenant_max_running_jobs or (
            max(1, self.max_workers - 1) if shared else self.max_workers
        )
        return queued, running


def runtime_requirements_default(host: str, raw: Mapping[str, Any]) -> bool:
    """``allow_runtime_requirements`` when not set: on for loopback outside ``production_mode``."""
    production = str(raw.get("production_mode", False)).lower() in {"true", "1", "yes", "on"}
    return is_loopback(str(host)) and not production


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


GIB = 1 << 30
MAX_WORKERS_RANGE = (2, 64)
CGROUP_ROOT = Path("/sys/fs/cgroup")
ReadFile = Callable[[Path], "str | None"]  # one file's text, None when it cannot be read


def derived_max_workers(cpus: float, memory_bytes: int) -> int:
    """The default ``max_workers``: 2 per usable CPU, at most 1 per GiB of available memory, in [2, 64]."""
    low, high = MAX_WORKERS_RANGE
    return max(low, min(high, int(2 * cpus), memory_bytes // GIB))


def cgroup_cpu_quota(proc_self_cgroup: str, read: ReadFile, root: Path = CGROUP_ROOT) -> float | None:
    """The tightest CPU quota (in CPUs) on the path from this process's cgroup up to the root, or None.

    v2: ``cpu.max`` ("max 100000" or "150000 100000"); v1: ``cpu.cfs_quota_us`` (-1: none) over
    ``cpu.cfs_period_us`` in the cpu hierarchy. ``read(path) -> str | None`` reads one file."""
    quotas: list[float] = []
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            base, v2 = root, True
        elif "cpu" in controllers.split(","):
            base, v2 = root / controllers, False
            if read(base / "cpu.cfs_period_us") is None:
                base = root / "cpu"
        else:
            continue
        node = Path(path.strip() or "/")
        for directory in [node, *node.parents]:
            here = base / str(directory).lstrip("/")
            if v2:
                parts = (read(here / "cpu.max") or "").split()
                if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]):
                    quotas.append(int(parts[0]) / int(parts[1]))
            else:
                quota, period = read(here / "cpu.cfs_quota_us"), read(here / "cpu.cfs_period_us")
                if quota and period and quota.strip().isdigit() and period.strip().isdigit():
                    quotas.append(int(quota) / max(1, int(period)))
    return min(quotas) if quotas else None


def mem_available(meminfo: str) -> int | None:
    """``MemAvailable`` of /proc/meminfo, in bytes."""
    for line in meminfo.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "MemAvailable:" and parts[1].isdigit():
            return int(parts[1]) * 1024
    return None


def cgroup_memory_limit(proc_self_cgroup: str, read: ReadFile, root: Path = CGROUP_ROOT) -> int | None:
    """This process's own cgroup memory limit in bytes (v2 ``memory.max``, v1 ``memory.limit_in_bytes``;
    v1's "unlimited" is a huge number, kept: the smaller of it and MemAvailable wins), or None."""
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        here = path.strip().lstrip("/")
        if hierarchy == "0" and not controllers:
            value = read(root / here / "memory.max")
        elif "memory" in controllers.split(","):
            value = read(root / "memory" / here / "memory.limit_in_bytes")
        else:
            continue
        if value and value.strip().isdigit():
            return int(value)
    return None


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def machine_max_workers() -> int:
    """``derived_max_workers`` for this machine: CPUs from ``sched_getaffinity`` and the cgroup CPU quota,
    memory from MemAvailable and the server's cgroup memory limit (read once per settings load)."""
    cpus: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    own = _read_or_none(Path("/proc/self/cgroup")) or ""
    quota = cgroup_cpu_quota(own, _read_or_none)
    if quota is not None:
        cpus = min(cpus, quota)
    limits = [m for m in (mem_available(_read_or_none(Path("/proc/meminfo")) or ""),
                          cgroup_memory_limit(own, _read_or_none)) if m is not None]  # fmt: skip
    return derived_max_workers(cpus, min(limits) if limits else MAX_WORKERS_RANGE[1] * GIB)


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg) / "tako_vm" if xdg else Path.home() / ".tako_vm"


def find_config_file(config_path: str | None, env: Mapping[str, str]) -> Path | None:
    if config_path:
        return Path(config_path)
    if env.get("TAKO_VM_CONFIG"):
        return Path(env["TAKO_VM_CONFIG"])
    local = Path("tako_vm.yaml")
    return local if local.is_file() else None


NON_SETTING_ENV = frozenset(
    {
        "TAKO_VM_CONFIG",  # the config file itself
        "TAKO_VM_URL",  # the CLI's and SDK examples' server
        "TAKO_VM_API_KEY",  # the CLI's key
        "TAKO_VM_RUNSC",  # the runsc binary (checked by check_runsc_env)
        "TAKO_VM_RUNTIME_CLASS_NAME",  # the operator's (Helm chart)
        "TAKO_VM_DEFAULT_JOB_IMAGE",  # the operator's (Helm chart)
        "TAKO_VM_METRICS_PORT",  # the operator's
        "TAKO_VM_ROOTFS_MIRROR",  # scripts/build-rootfs.sh
        "TAKO_VM_TEST_CACHE",  # scripts/test-in-fresh-vm.sh
        "TAKO_VM_TEST_TIMEOUT_MINUTES",
        "TAKO_VM_TEST_KEEP_DISK",
    }
)
"""``TAKO_VM_`` names that are not settings but are read elsewhere; any other unknown name is an error."""


_SERVICE_LINK_RE = re.compile(
    r"^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$"
)


def is_service_link(name: str, value: str) -> bool:
    """A variable Kubernetes injects for a Service (a release's ``tako-vm-shim`` Service gives
    ``TAKO_VM_SHIM_SERVICE_HOST``, ``TAKO_VM_SHIM_PORT=tcp://...``): not a setting, not a typo."""
    if _SERVICE_LINK_RE.match(name):
        return True
    return name.endswith("_PORT") and re.match(r"^(tcp|udp|sctp)://", value) is not None


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def unknown_env_names(env: Mapping[str, str]) -> list[str]:
    """``TAKO_VM_*`` names that are neither a setting nor in ``NON_SETTING_ENV`` (typos), each with a
    suggestion when a setting's name is close: ``TAKO_VM_MAX_WORKRS (did you mean TAKO_VM_MAX_WORKERS?)``."""
    import difflib

    known = {_env_name(key) for key in Settings.model_fields}
    known |= {_env_name(f"kubernetes__{key}") for key in KubernetesOptions.model_fields}
    problems = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known or name in NON_SETTING_ENV:
            continue
        if is_service_link(name, env[name]):
            continue
        close = difflib.get_close_matches(name, sorted(known | NON_SETTING_ENV), n=1, cutoff=0.8)
        problems.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return problems


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``TAKO_VM_MAX_WORKERS=8`` -> ``{"max_workers": "8"}`` for every top-level scalar key.

    Nested keys use a double underscore: ``TAKO_VM_KUBERNETES__NAMESPACE``. Values are strings;
    pydantic converts them (booleans accept true/false/1/0/yes/no). An unknown ``TAKO_VM_`` name is a
    ``ConfigError`` naming it: a typo never silently leaves the default in place.
    """
    unknown = unknown_env_names(env)
    if unknown:
        raise ConfigError(
            "unknown environment variable(s): "
            + ", ".join(unknown)
            + " (settings are TAKO_VM_<KEY> for the keys of tako_vm.yaml; docs/configuration.md)"
        )
    overrides: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_ENV or is_service_link(name, value):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if "__" in key:
            outer, inner = key.split("__", 1)
            overrides.setdefault(outer, {})[inner] = value
        else:
            overrides[key] = value
    return {k: v for k, v in overrides.items() if k in Settings.model_fields}


def check_runsc_env(settings: Settings, env: Mapping[str, str]) -> None:
    """An explicit runsc (``runsc_path`` or ``$TAKO_VM_RUNSC``) that is not an executable file is an error
    naming it, never a silent fall-back to another runsc (local backend only)."""
    if settings.backend != "local":
        return
    for name, path in (("runsc_path", settings.runsc_path), ("TAKO_VM_RUNSC", env.get("TAKO_VM_RUNSC"))):
        if path and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            why = "is not an executable file" if os.path.exists(path) else "does not exist"
            raise ConfigError(f"{name}={path}: {why} (unset it to use .tools/bin/runsc or runsc on PATH)")


def load_settings(
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """File, then ``TAKO_VM_*`` environment, then explicit ``overrides`` (CLI flags); validated once."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    path = find_config_file(config_path, env)
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
        raw.update(loaded)
    for key, value in env_overrides(env).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from None
    check_runsc_env(settings, env)
    return settings


def format_validation_error(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors(include_url=False):
        key = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key or 'config'}: {message}" if key else f"  {message}")
    return "\n".join(lines)
