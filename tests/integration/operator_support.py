"""Helpers for operator integration tests: the real operator (kopf) in a thread, a fake kubelet
that moves Pods through their lifecycle, and small job/phase helpers.

Imported by its own name, never `from conftest import ...`: several test folders have a conftest.py
and only one of them can be the module `conftest`. kmock has no kubelet, so `FakeKubelet` patches
Pod status and stores container logs the way a kubelet would; the operator cannot tell the difference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from kube_harness import KubeHarness, wait_for

from tako_operator.main import OperatorOptions, operate
from tako_operator.settings import Limits, PodSettings, Settings, WebhookSettings
from tako_runner.outcome import frame_envelope


class OperatorThread:
    """The real operator (kopf + handlers) running in its own thread and event loop."""

    def __init__(self, options: OperatorOptions) -> None:
        self.options = options
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tako-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(operate(self.options, stop_flag=self.stop_flag, ready_flag=self.ready_flag))
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> OperatorThread:
        self.thread.start()
        if not self.ready_flag.wait(timeout=60):
            raise AssertionError(f"operator did not become ready: {self.error!r}")
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "operator thread did not stop"


def operator_options(kube: KubeHarness, tmp_path: Path, **overrides: Any) -> OperatorOptions:
    limits = Limits(
        max_attempts=overrides.pop("max_attempts", 3),
        retry_backoff_seconds=overrides.pop("retry_backoff_seconds", 0.2),
        retry_backoff_max_seconds=2.0,
        default_ttl_seconds=overrides.pop("default_ttl_seconds", 3600),
    )
    config = Settings(
        max_concurrent=overrides.pop("max_concurrent", 10),
        limits=limits,
        webhooks=overrides.pop("webhooks", WebhookSettings()),
        pods=dataclasses.replace(
            overrides.pop("pods", PodSettings()),
            **(
                {"deadline_grace_seconds": overrides.pop("deadline_grace_seconds")}
                if "deadline_grace_seconds" in overrides
                else {}
            ),
        ),
    )
    return OperatorOptions(
        namespaces=[kube.namespace],
        kubeconfig=str(kube.kubeconfig(tmp_path)),
        config=config,
        watch_server_timeout=overrides.pop("watch_server_timeout", 5),
        **overrides,
    )


def sample_job(name: str, code: str = "print('hello')", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {"name": name},
        "spec": {"code": code, **spec},
    }


def envelope(exit_code: int = 0, stdout: str = "", stderr: str = "", **extra: Any) -> str:
    body = {
        "v": 1,
        "exit_code": exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "timing": {"startup_ms": 5, "execution_ms": 10, "total_ms": 15},
        **extra,
    }
    return "some runner chatter\n" + frame_envelope(body)


class FakeKubelet:
    """Moves Pods in the emulator through a kubelet's status changes (kmock has no kubelet).

    Like the real runner, a container that printed an envelope exits 0 (the user's exit code is in
    the envelope); `classify` ignores envelopes from containers that exited otherwise."""

    def __init__(self, kube: KubeHarness) -> None:
        self.kube = kube

    def wait_pod(self, job: str, timeout: float = 30.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            status = (self.kube.get("pythonjobs", job) or {}).get("status") or {}
            name = status.get("podName")
            return self.kube.get("pods", name) if name else None

        pod: dict[str, Any] = wait_for(find, timeout=timeout, what=f"a pod for {job}")
        return pod

    def run(self, pod: str, namespace: str | None = None) -> None:
        self.kube.patch_status(
            "pods",
            pod,
            {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "job", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
                ],
            },
            namespace=namespace,
        )

    def terminate(
        self,
        pod: str,
        exit_code: int,
        log: str | None,
        reason: str = "Completed",
        phase: str | None = None,
        namespace: str | None = None,
    ) -> None:
        if log is not None:
            self.kube.set_log(pod, "job", log, namespace=namespace)
        self.kube.patch_status(
            "pods",
            pod,
            {
                "phase": phase or ("Succeeded" if exit_code == 0 else "Failed"),
                "containerStatuses": [
                    {"name": "job", "state": {"terminated": {"exitCode": exit_code, "reason": reason}}}
                ],
            },
            namespace=namespace,
        )

    def succeed(
        self,
        pod: str,
        stdout: str = "hello\n",
        output: dict[str, Any] | None = None,
        namespace: str | None = None,
    ) -> None:
        self.run(pod, namespace)
        self.terminate(pod, 0, envelope(0, stdout, output=output), namespace=namespace)

    def evict(self, pod: str) -> None:
        self.kube.patch_status(
            "pods", pod, {"phase": "Failed", "reason": "Evicted", "message": "node memory pressure"}
        )


def phase_of(kube: KubeHarness, name: str) -> str | None:
    job = kube.get("pythonjobs", name)
    return ((job or {}).get("status") or {}).get("phase")


def wait_phase(kube: KubeHarness, name: str, phase: str, timeout: float = 30.0) -> dict[str, Any]:
    wait_for(lambda: phase_of(kube, name) == phase, timeout=timeout, what=f"{name} to reach {phase}")
    job = kube.get("pythonjobs", name)
    assert job is not None
    return job


class BusyKubelet:
    """Completes every Pod shortly after it appears (in `namespaces`, default the harness's), from a
    background thread."""

    def __init__(self, kube: KubeHarness, delay: float = 0.1, namespaces: list[str] | None = None) -> None:
        self.kube = kube
        self.namespaces = namespaces or [kube.namespace]
        self.kubelet = FakeKubelet(kube)
        self.delay = delay
        self.stop = threading.Event()
        self.done: set[tuple[str, str]] = set()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            for namespace in self.namespaces:
                for pod in self.kube.list("pods", namespace=namespace):
                    name = pod["metadata"]["name"]
                    if (namespace, name) not in self.done:
                        self.kubelet.succeed(name, stdout=f"{name}\n", namespace=namespace)
                        self.done.add((namespace, name))
            time.sleep(0.2)

    def __enter__(self) -> BusyKubelet:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
