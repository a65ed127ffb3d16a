"""Operator suite: the real operator (``tako-vm operator``, its own process) against kmock.

PythonJobs are created in bursts of 10, 100 and 1,000; for each job the latency is the Pod's
``creationTimestamp`` minus the PythonJob's (both stamped by the emulator, microsecond precision,
one clock). Nothing runs the Pods (kmock has no kubelet): this measures reconciliation, i.e. admission,
ConfigMap + NetworkPolicy + Pod creation and the status patch. The concurrency limit is lifted so that
the operator's own speed is measured, not its admission policy. The emulator harness is the test
suite's (tests/integration/kube_harness.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import REPO, MemorySampler
from bench.stats import markdown_table, rss_mib, summarize

sys.path.insert(0, str(REPO / "tests" / "integration"))


KEEP_REQUESTS = 8
CAP_S = 120.0  # per burst, after the last PythonJob was created
SIZES = {"quick": (10, 50), "full": (10, 100, 1000)}


def _fast_harness(namespace: str) -> Any:
    """The test suite's KubeHarness with two emulator costs removed (bench only; tests keep kmock as is).

    - kmock 0.8 finds the object of a request by scanning *every* stored object
      (``KubernetesEmulator.__get_objs``): O(objects) per GET/PATCH/create, so a burst of N PythonJobs
      (each becoming 4 objects and ~6 requests) costs O(N^2) in the emulator. Profiled here: a
      1,000-job burst ran at 7.5 jobs/s against 31.5 for 100 jobs, with the operator idle in
      ``SocketIO.readinto`` waiting for the emulator and the emulator's thread busy in
      ``__get_objs``/``resource.__eq__``. When the request names one object (name + namespace), the
      bench looks it up by its key; anything else (lists, cluster-wide reads, a miss) still takes
      kmock's own scan, so answers do not change.
    - kmock also records every request; the bench keeps the last KEEP_REQUESTS (memory only: the
      harness already limits the per-request re-scan of that history).
    """
    import kmock
    import kube_harness

    scan = kmock.KubernetesEmulator._KubernetesEmulator__get_objs  # type: ignore[attr-defined]

    class FastEmulator(kube_harness._Emulator):  # type: ignore[misc, name-defined]
        def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:
            if request.name is not None and (strict or request.namespace is not None):
                found = self._objects._objects.get((request.resource, request.namespace, request.name))
                if found is not None:
                    return [found]
            result: list[Any] = scan(self, request, strict)
            return result

        async def _handle(self, request: Any) -> Any:
            for history in [self._requests, *(p._requests for p in self._payloads)]:
                if len(history) > 2 * KEEP_REQUESTS:
                    del history[:-KEEP_REQUESTS]
            return await super()._handle(request)

    class FastHarness(kube_harness.KubeHarness):  # type: ignore[misc, name-defined]
        async def _start(self) -> str:
            original = kube_harness._Emulator
            kube_harness._Emulator = FastEmulator
            try:
                url: str = await super()._start()
            finally:
                kube_harness._Emulator = original
            return url

    return FastHarness(namespace=namespace)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {"name": name},
        "spec": {"code": "print(1)", "timeoutSeconds": 30},
    }


def _wait_pods(kube: Any, total: int, within_s: float) -> bool:
    """True once ``total`` Pods exist; False when the cap is reached first (the rest is reported)."""
    deadline = time.monotonic() + within_s
    while kube.creations("pods") < total:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def operator_suite(root: Path, quick: bool) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with _fast_harness("tako-bench") as kube:
        env = {
            **os.environ,
            "TAKO_OPERATOR_MAX_CONCURRENT_JOBS": "100000",
            "TAKO_OPERATOR_DEFAULT_TTL_SECONDS": "3600",
        }
        argv = [
            str(Path(sys.executable).parent / "tako-vm"),
            "operator",
            "--namespace",
            kube.namespace,
            "--kubeconfig",
            str(kube.kubeconfig(root)),
        ]
        log = (root / "operator.log").open("wb")
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            kube.create("pythonjobs", _job("warmup"))
            if not _wait_pods(kube, 1, 120):
                raise RuntimeError("the operator did not reconcile a first PythonJob within 120 s")
            time.sleep(1.0)
            at_rest = rss_mib(process.pid)
            created = 1
            with MemorySampler(process.pid) as sampler:
                for size in sizes:
                    names = [f"b{size}-{n}" for n in range(size)]
                    started = time.perf_counter()
                    for name in names:
                        kube.create("pythonjobs", _job(name))
                    created += size
                    complete = _wait_pods(kube, created, CAP_S)
                    wall = time.perf_counter() - started
                    results[str(size)] = {**_measure(kube, names, wall), "complete_within_cap": complete}
            peak = sampler.peak
            after = rss_mib(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
    rows = [
        [
            size,
            r["pods"],
            r["latency"]["p50_ms"],
            r["latency"]["p95_ms"],
            r["latency"]["p99_ms"],
            r["jobs_per_s"],
        ]
        for size, r in results.items()
    ]
    table = markdown_table(
        ["PythonJobs at once", "Pods created", "CR->Pod p50 ms", "p95 ms", "p99 ms", "reconciled jobs/s"],
        rows,
    )
    table += "\n\n" + markdown_table(
        ["operator RSS MiB", "at rest", "peak under load", "after"],
        [["tako-vm operator", at_rest, peak, after]],
    )
    return {
        "sizes": results,
        "operator_rss_mib": {"at_rest": at_rest, "peak_under_load": peak, "after": after},
        "table": table,
    }


def _measure(kube: Any, names: list[str], wall: float) -> dict[str, Any]:
    jobs = {j["metadata"]["name"]: j for j in kube.list("pythonjobs")}
    pods_by_owner: dict[str, dict[str, Any]] = {}
    for pod in kube.list("pods"):
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "PythonJob":
                pods_by_owner[ref["name"]] = pod
    latencies: list[float] = []
    first_created = min(_ts(jobs[n]["metadata"]["creationTimestamp"]) for n in names)
    last_pod = first_created
    for name in names:
        pod = pods_by_owner.get(name)
        if pod is None:
            continue
        pod_ts = _ts(pod["metadata"]["creationTimestamp"])
        latencies.append(pod_ts - _ts(jobs[name]["metadata"]["creationTimestamp"]))
        last_pod = max(last_pod, pod_ts)
    span = max(last_pod - first_created, 1e-6)
    return {
        "jobs": len(names),
        "pods": len(latencies),
        "latency": summarize(latencies),
        "jobs_per_s": round(len(latencies) / span, 1),
        "span_s": round(span, 2),
        "wall_s_incl_creating": round(wall, 2),
    }
