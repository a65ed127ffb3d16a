"""Operator-wide settings that shape the objects built for a PythonJob (pure data, no I/O).

The operator's entry point fills this from its command line / environment; the builders and the status
computation only ever receive it as an argument, so tests construct it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
class OperatorSettings:
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
