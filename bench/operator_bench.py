"""Operator suite: the real operator (``tako-vm operator``, its own process) against kmock, side by side
with a baseline operator: the tree at BASELINE_REV (the last commit before the throughput work of issue
#17), unpacked with ``git archive`` and run from its own sources, in the same run, in random order.

PythonJobs are created in bursts of 10, 100 and 1,000, then a second 1,000 (memory must stay flat),
then 1,000 more at a steady 50 per second (the CR -> Pod latency when jobs arrive no faster than the
operator drains them; a burst of 1,000 at once measures throughput, its tail is queueing);
for each job the latency is the Pod's ``creationTimestamp`` minus the PythonJob's (both stamped by the
emulator, microsecond precision, one clock). Nothing runs the Pods (kmock has no kubelet): this
measures reconciliation, i.e. admission, ConfigMap + NetworkPolicy + Pod creation and the status patch.
The concurrency limit is lifted so that the operator's own speed is measured, not its admission
policy. Each operator gets its own emulator (the test suite's, tests/integration/kube_harness.py),
which also counts the API requests it served per job.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import REPO, MemorySampler
from bench.shim_kubernetes import shim_kubernetes_suite
from bench.stats import markdown_table, rss_mib, summarize

sys.path.insert(0, str(REPO / "tests" / "integration"))


KEEP_REQUESTS = 8
CHART_MALLOC_ARENA_MAX = "2"  # charts/tako-vm/templates/operator-deployment.yaml sets the same
CAP_S = 120.0  # per burst, after the last PythonJob was created
DELETE_CAP_S = 60.0  # for the operator to clean up after deleted jobs
# the bursts, in order; the last one repeats the one before (RSS must not grow per job)
SIZES = {"quick": (10, 50, 50), "full": (10, 100, 1000, 1000)}
# then, after deleting the last burst, jobs created at a steady rate (jobs per second, how many): the
# latency an agent sees when submissions arrive no faster than the operator drains them
SUSTAINED = {"quick": (50.0, 100), "full": (50.0, 1000)}
# before issue #17's throughput work (docs/performance.md: 16-20 jobs/s); another revision (e.g. `main`,
# to measure a change against the tree it branched from) through $TAKO_BENCH_OPERATOR_BASELINE
BASELINE_REV = os.environ.get("TAKO_BENCH_OPERATOR_BASELINE") or "801a114"
# The baseline's figures in the run recorded in docs/performance.md before this work (2026-11-28, load
# 17-22), printed when the baseline tree cannot be unpacked (no git history, e.g. an sdist).
RECORDED_BASELINE = {"jobs_per_s": {"10": 18.4, "100": 19.6, "1000": 15.8}, "rss_after_mib": 183.6}


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
            self.served = getattr(self, "served", 0) + 1
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


def baseline_tree(root: Path) -> Path | None:
    """The sources at BASELINE_REV, unpacked under `root` (None without git history)."""
    target = root / "baseline"
    archive = root / "baseline.tar"
    try:
        subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), BASELINE_REV],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def operator_argv(tree: Path | None, kubeconfig: Path, namespace: str) -> tuple[list[str], dict[str, str]]:
    """`tako-vm operator` of this tree, or of `tree` (its own sources first on the path)."""
    env = {
        **os.environ,
        "TAKO_OPERATOR_MAX_CONCURRENT_JOBS": "100000",
        "TAKO_OPERATOR_DEFAULT_TTL_SECONDS": "3600",
    }
    args = ["operator", "--namespace", namespace, "--kubeconfig", str(kubeconfig)]
    if tree is None:
        env["MALLOC_ARENA_MAX"] = CHART_MALLOC_ARENA_MAX  # as the chart runs it (the baseline's had none)
        return [str(Path(sys.executable).parent / "tako-vm"), *args], env
    paths = [str(tree / part) for part in ("client", "operator", "runner", "shim")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    code = "import sys; from tako_vm.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args], env


def run_operator(
    root: Path, sizes: tuple[int, ...], tree: Path | None, sustained: tuple[float, int] | None = None
) -> dict[str, Any]:
    """One operator against its own emulator: every burst in `sizes`, RSS, requests per job; then
    `sustained` (rate per second, count) jobs created at that steady rate."""
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    rss: dict[str, Any] = {}
    steady = None
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with _fast_harness("tako-bench") as kube:
        argv, env = operator_argv(tree, kube.kubeconfig(root), kube.namespace)
        log = (root / "operator.log").open("wb")
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            kube.create("pythonjobs", _job("warmup"))
            if not _wait_pods(kube, 1, 120):
                raise RuntimeError("the operator did not reconcile a first PythonJob within 120 s")
            time.sleep(1.0)
            rss["at_rest"] = rss_mib(process.pid)
            created = 1
            with MemorySampler(process.pid) as sampler:
                previous: list[str] = []
                for number, size in enumerate(sizes):
                    label = str(size) if str(size) not in results else f"{size} again"
                    if label.endswith("again"):
                        # The repeat starts after the previous burst's jobs are deleted (what their TTL
                        # does): RSS after it minus RSS after the previous one is what a job leaves
                        # behind once it is gone, not the live state of 1,000 more jobs.
                        rss["after_deleting_previous"] = _delete_jobs(kube, previous, process.pid)
                    names = [f"b{number}-{size}-{n}" for n in range(size)]
                    previous = names
                    served = kube._emulator.served
                    cpu_before = cpu_seconds(process.pid)
                    started = time.perf_counter()
                    for name in names:
                        kube.create("pythonjobs", _job(name))
                    creating = time.perf_counter() - started
                    created += size
                    complete = _wait_pods(kube, created, CAP_S)
                    wall = time.perf_counter() - started
                    time.sleep(1.0)  # let the last passes (status echoes, pod events) finish
                    requests = kube._emulator.served - served - size  # minus the creates themselves
                    cpu_used = (cpu_seconds(process.pid) or 0.0) - (cpu_before or 0.0)
                    results[label] = {
                        **_measure(kube, names, wall),
                        "complete_within_cap": complete,
                        "creating_s": round(creating, 2),
                        "api_requests_per_job": round(requests / size, 2),
                        "cpu_ms_per_job": round(cpu_used * 1000 / size, 2),
                        "rss_after_mib": rss_mib(process.pid),
                    }
            rss["peak_under_load"] = sampler.peak
            rss["after"] = rss_mib(process.pid)
            if sustained is not None:
                _delete_jobs(kube, previous, process.pid)
                steady = _sustained(kube, *sustained, already=created)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
    load = {"at_start": load_at_start, "at_end": [round(x, 2) for x in os.getloadavg()]}
    return {"sizes": results, "operator_rss_mib": rss, "sustained": steady, "load_average": load}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sustained(kube: Any, rate: float, count: int, already: int) -> dict[str, Any]:
    """Create `count` PythonJobs at `rate` per second (paced against the clock, so a slow create is
    caught up, never skipped), then wait for their Pods; their CR -> Pod latencies."""
    names = [f"steady-{n}" for n in range(count)]
    started = time.perf_counter()
    for number, name in enumerate(names):
        delay = started + number / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        kube.create("pythonjobs", _job(name))
    creating = time.perf_counter() - started
    complete = _wait_pods(kube, already + count, CAP_S)
    return {
        **_measure(kube, names, time.perf_counter() - started),
        "rate_per_s": rate,
        "achieved_rate_per_s": round(count / creating, 1),
        "complete_within_cap": complete,
    }


def _growth(run: dict[str, Any]) -> dict[str, Any]:
    """RSS after the last two bursts (the repeat runs after the first one's jobs were deleted)."""
    labels = list(run["sizes"])
    first, again = run["sizes"][labels[-2]], run["sizes"][labels[-1]]
    return {
        "rss_after_first_mib": first["rss_after_mib"],
        "rss_after_repeat_mib": again["rss_after_mib"],
        "rss_growth_first_burst_mib": round(first["rss_after_mib"] - run["operator_rss_mib"]["at_rest"], 1),
        "rss_growth_repeat_burst_mib": round(again["rss_after_mib"] - first["rss_after_mib"], 1),
    }


def _delete_jobs(kube: Any, names: list[str], pid: int) -> float | None:
    """Delete `names` (as their TTL would) and wait (at most DELETE_CAP_S) until the operator has
    removed what they owned (Pods, ConfigMaps, NetworkPolicies: kmock has no garbage collector), so
    that the next burst does not share the emulator with that cleanup; the operator's RSS then."""
    for name in names:
        kube.delete("pythonjobs", name)
    owned = set(names)
    deadline = time.monotonic() + DELETE_CAP_S
    while time.monotonic() < deadline:
        left = [
            obj
            for kind in ("pods", "configmaps", "networkpolicies")
            for obj in kube.list(kind)
            if any(ref.get("name") in owned for ref in obj["metadata"].get("ownerReferences") or [])
        ]
        if not left:
            break
        time.sleep(0.5)
    time.sleep(1.0)
    return rss_mib(pid)


def _ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 2) if new and old else None


def operator_suite(root: Path, quick: bool) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    sustained = SUSTAINED["quick" if quick else "full"]
    root.mkdir(parents=True, exist_ok=True)
    tree = baseline_tree(root)
    order = ["current", "baseline"] if tree is not None else ["current"]
    random.shuffle(order)
    trees = {"current": None, "baseline": tree}
    runs = {name: run_operator(root / name, sizes, trees[name], sustained) for name in order}
    current = runs["current"]
    baseline = runs.get("baseline")
    rows = []
    for label, r in current["sizes"].items():
        old = (baseline or {}).get("sizes", {}).get(label) if baseline else None
        rows.append(
            [
                label,
                r["pods"],
                r["latency"]["p50_ms"],
                r["latency"]["p99_ms"],
                r["jobs_per_s"],
                r["api_requests_per_job"],
                r["rss_after_mib"],
                r.get("cpu_ms_per_job", ""),
                old["latency"]["p99_ms"] if old else "",
                old["jobs_per_s"] if old else "",
                old["api_requests_per_job"] if old else "",
                old["rss_after_mib"] if old else "",
                old.get("cpu_ms_per_job", "") if old else "",
                _ratio(r["jobs_per_s"], old["jobs_per_s"]) if old else "",
            ]
        )
    headers = [
        "PythonJobs at once", "Pods created", "CR->Pod p50 ms", "p99 ms", "jobs/s", "API requests/job",
        "RSS after MiB", "CPU ms/job", f"baseline {BASELINE_REV} p99 ms", "baseline jobs/s",
        "baseline requests/job", "baseline RSS MiB", "baseline CPU ms/job",
        "jobs/s ratio",
    ]  # fmt: skip
    table = markdown_table(headers, rows)
    growth_by_run = {name: _growth(run) for name, run in runs.items()}
    rss_rows = [
        [name, run["operator_rss_mib"].get("at_rest"), growth_by_run[name]["rss_after_first_mib"],
         run["operator_rss_mib"].get("after_deleting_previous"), growth_by_run[name]["rss_after_repeat_mib"],
         growth_by_run[name]["rss_growth_repeat_burst_mib"], run["operator_rss_mib"].get("peak_under_load")]
        for name, run in runs.items()
    ]  # fmt: skip
    labels = list(current["sizes"])
    table += "\n\nLoad average (1, 5, 15 min) at the start / end of each operator's run: " + "; ".join(
        f"{name} {run['load_average']['at_start']} / {run['load_average']['at_end']}"
        for name, run in runs.items()
    )
    table += "\n\n" + markdown_table(
        ["operator RSS MiB", "at rest", f"after {labels[-2]}", "after deleting them", f"after {labels[-1]}",
         "growth over the repeat", "peak"],
        rss_rows,
    )  # fmt: skip
    ratios: dict[str, Any] = {}
    if baseline is not None:
        for label, r in current["sizes"].items():
            old = baseline["sizes"].get(label)
            if old:
                ratios[f"jobs_per_s_{label.replace(' ', '_')}_over_baseline"] = _ratio(
                    r["jobs_per_s"], old["jobs_per_s"]
                )
        ratios["rss_after_over_baseline"] = _ratio(
            current["operator_rss_mib"]["after"], baseline["operator_rss_mib"]["after"]
        )
    else:
        table += (
            f"\n\nNo git history: against the RECORDED baseline figures (another run): {RECORDED_BASELINE}"
        )
        for label, old in RECORDED_BASELINE["jobs_per_s"].items():
            if label in current["sizes"]:
                ratios[f"jobs_per_s_{label}_over_recorded"] = _ratio(
                    current["sizes"][label]["jobs_per_s"], old
                )
    growth = growth_by_run["current"]
    shim = shim_kubernetes_suite(root, sizes[-1], tree)
    shim_keys = ("at_rest", "after_first", "after_deleting", "after_repeat", "growth_over_repeat")
    shim_rows = [
        [name, *(run.get(k, run.get("error", "")) for k in shim_keys)] for name, run in shim["runs"].items()
    ]
    table += "\n\n" + markdown_table(
        ["shim kubernetes backend RSS MiB", "at rest", f"after {sizes[-1]} submits", "after deleting them",
         f"after {sizes[-1]} more", "growth over the repeat"],
        shim_rows,
    )  # fmt: skip
    if baseline is not None:
        ratios["p99_ms_1000_over_baseline"] = _ratio(
            current["sizes"][labels[-2]]["latency"]["p99_ms"],
            baseline["sizes"][labels[-2]]["latency"]["p99_ms"],
        )
    table += "\n\n" + _sustained_table(runs, ratios)
    return {
        "sizes": current["sizes"],
        "operator_rss_mib": current["operator_rss_mib"],
        "baseline": {"rev": BASELINE_REV, **baseline} if baseline else {"recorded": RECORDED_BASELINE},
        "order": order,
        "ratios": ratios,
        "growth": growth,
        "sustained": current.get("sustained"),
        "baseline_sustained": (baseline or {}).get("sustained"),
        "baseline_growth": growth_by_run.get("baseline"),
        "shim_kubernetes": shim,
        "table": table,
    }


def _sustained_table(runs: dict[str, Any], ratios: dict[str, Any]) -> str:
    """Each operator's CR -> Pod latency under a steady rate; adds the p99 ratio to `ratios`."""
    rows = []
    for name, run in runs.items():
        steady = run.get("sustained")
        if steady:
            latency = steady["latency"]
            rows.append(
                [name, steady["jobs"], steady["achieved_rate_per_s"], steady["pods"], latency["p50_ms"],
                 latency["p99_ms"], latency["max_ms"], steady["jobs_per_s"]]
            )  # fmt: skip
    current, baseline = (runs.get(name, {}).get("sustained") for name in ("current", "baseline"))
    if current and baseline:
        ratios["p99_ms_sustained_over_baseline"] = _ratio(
            current["latency"]["p99_ms"], baseline["latency"]["p99_ms"]
        )
    return markdown_table(
        ["PythonJobs at a steady rate", "jobs", "created per s", "Pods created", "CR->Pod p50 ms", "p99 ms",
         "max ms", "jobs/s"],
        rows,
    )  # fmt: skip


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
