"""A job Pod with a huge log (the real operator, kopf, against kmock).

The operator reads only the end of a container's log (the runner's envelope is the last thing it
prints), at most ``PodSettings.log_limit_bytes``. kmock has no kubelet, so a kmock reaction here
serves Pod logs the way the kubelet does: ``tailLines`` first, then the first ``limitBytes`` of that
(kubelet's ReadLogs), and records what it was asked for and how much it sent.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness
from operator_support import FakeKubelet, OperatorThread, envelope, operator_options, sample_job, wait_phase

from tako_operator.settings import PodSettings

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024  # max_log_bytes for these tests (the default is 12,320,768)
HUGE = 24 * 1024 * 1024  # each huge log is 24 times that


@dataclass
class Served:
    pod: str
    tail_lines: int | None
    limit_bytes: int | None
    sent: int


class Kubelet:
    """Serves Pod logs with the kubelet's tailLines/limitBytes semantics; counts what it sends."""

    def __init__(self, kube: KubeHarness) -> None:
        self.kube = kube
        self.honour_params = True  # False: send the whole log whatever was asked (a non-conforming server)
        self.logs: dict[str, bytes] = {}
        self.served: list[Served] = []
        kube._run(self._register())

    async def _register(self) -> None:
        self.kube._emulator[kmock.resource("v1/pods"), kmock.subresource("log")].override << self._serve

    def _serve(self, request: Any) -> Any:
        pod = request.name or ""
        if pod not in self.logs:
            raise kmock.KubernetesNotFoundError(message=f"no log for pod {pod!r}")
        tail = _int(request.params.get("tailLines"))
        limit = _int(request.params.get("limitBytes"))
        data = self.logs[pod]
        if tail is not None and self.honour_params:
            data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
        if limit is not None and self.honour_params:
            data = data[:limit]
        self.served.append(Served(pod, tail, limit, len(data)))
        return kmock.Response(status=200, payload=data, headers={"Content-Type": "text/plain"})

    def finish(self, job: str, log: bytes) -> None:
        """Terminate the job's Pod (exit 0, like a runner that printed its frame) with this log."""
        pod = FakeKubelet(self.kube).wait_pod(job, timeout=30)["metadata"]["name"]
        self.logs[pod] = log
        FakeKubelet(self.kube).terminate(pod, 0, log=None)


def _int(raw: str | None) -> int | None:
    return int(raw) if raw not in (None, "") else None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KubeHarness, Kubelet]]:
    with KubeHarness() as kube:
        kubelet = Kubelet(kube)
        options = operator_options(kube, tmp_path, pods=PodSettings(max_log_bytes=LIMIT))
        operator = OperatorThread(options).start()
        try:
            yield kube, kubelet
        finally:
            operator.stop()


def chatter(size: int) -> bytes:
    line = b"pip: Collecting something-large (from -r requirements.txt) ......................\n"
    return line * (size // len(line))


def test_a_huge_log_before_the_envelope_is_read_from_its_end_only(
    cluster: tuple[KubeHarness, Kubelet],
) -> None:
    kube, kubelet = cluster
    kube.create("pythonjobs", sample_job("chatty"))
    kubelet.finish("chatty", chatter(HUGE) + envelope(0, "the result\n").encode())

    job = wait_phase(kube, "chatty", "Succeeded", timeout=30)
    assert job["status"]["stdout"] == "the result\n", job["status"]
    reads = [s for s in kubelet.served if s.pod == "chatty-pod"]
    assert reads, "the operator read the log"
    assert all(s.limit_bytes == LIMIT + 1 and s.tail_lines is not None for s in reads), reads
    assert sum(s.sent for s in reads) < LIMIT, f"read {sum(s.sent for s in reads)} of {HUGE} bytes"


def test_a_log_too_big_to_hold_its_envelope_fails_the_job_naming_the_limit(
    cluster: tuple[KubeHarness, Kubelet],
) -> None:
    """One 24 MiB line at the end (e.g. user code writing straight to the container's stdout):
    even the last 3 lines exceed the limit, so no envelope can be read."""
    kube, kubelet = cluster
    kube.create("pythonjobs", sample_job("flood"))
    kubelet.finish("flood", b"started\n" + b"A" * HUGE)

    job = wait_phase(kube, "flood", "Failed", timeout=30)
    error = job["status"]["error"]
    assert error["type"] == "internal_error", error
    assert f"max_log_bytes={LIMIT}" in error["message"], error
    reads = [s for s in kubelet.served if s.pod == "flood-pod"]
    assert [s.tail_lines for s in reads[:2]] == [50, 3], reads
    assert all(s.sent <= LIMIT + 1 for s in reads), reads


def test_a_server_ignoring_the_limits_still_gets_only_max_log_bytes_read(
    cluster: tuple[KubeHarness, Kubelet],
) -> None:
    """The bound holds client-side: a server that sends the whole 24 MiB log (ignoring tailLines
    and limitBytes) is read only up to max_log_bytes + 1 bytes, so the envelope at its very end is
    never reached and the job fails naming the limit (it would be Succeeded had the whole log been
    read)."""
    kube, kubelet = cluster
    kubelet.honour_params = False
    kube.create("pythonjobs", sample_job("deaf-server"))
    kubelet.finish("deaf-server", chatter(HUGE) + envelope(0, "unreachable\n").encode())

    job = wait_phase(kube, "deaf-server", "Failed", timeout=30)
    assert f"max_log_bytes={LIMIT}" in job["status"]["error"]["message"], job["status"]
    assert all(s.sent == len(kubelet.logs["deaf-server-pod"]) for s in kubelet.served), "the server sent all"


def test_the_default_limit_covers_the_largest_envelope_the_job_caps_allow() -> None:
    settings = PodSettings()
    escaped_streams = 6 * (settings.max_stdout_bytes + settings.max_stderr_bytes)
    assert settings.log_limit_bytes == escaped_streams + settings.max_artifact_bytes + 1024 * 1024
    assert settings.log_limit_bytes == 12_320_768
    assert PodSettings(max_stdout_bytes=1_000_000).log_limit_bytes > settings.log_limit_bytes
    assert PodSettings(max_log_bytes=LIMIT).log_limit_bytes == LIMIT


def test_a_log_limit_too_small_for_an_envelope_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="max_log_bytes must be >= 65536"):
        PodSettings(max_log_bytes=1000)


def test_the_limit_comes_from_the_environment_and_bad_values_name_the_variable() -> None:
    from tako_operator.settings import settings_from_env

    assert settings_from_env({}).pods.log_limit_bytes == 12_320_768
    assert settings_from_env({"TAKO_OPERATOR_MAX_LOG_BYTES": "2097152"}).pods.log_limit_bytes == 2_097_152
    with pytest.raises(ValueError, match="TAKO_OPERATOR_MAX_LOG_BYTES"):
        settings_from_env({"TAKO_OPERATOR_MAX_LOG_BYTES": "12MB"})
    with pytest.raises(ValueError, match="max_log_bytes must be >= 65536"):
        settings_from_env({"TAKO_OPERATOR_MAX_LOG_BYTES": "100"})
