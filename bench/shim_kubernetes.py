"""The shim's kubernetes backend under the operator suite's bursts: RSS of `tako-vm server --backend
kubernetes` (its own process, against its own fast kmock, see operator_bench._fast_harness) at rest,
after N submissions (POST /execute/async, then GET /jobs/{id} of each), after those PythonJobs are
deleted (what their TTL does), and after N more. Flat means the backend keeps nothing per job once
the job is gone. Run for this tree and for the baseline tree in the same run, in random order.

No operator runs here: the jobs stay Pending (the shim's memory is the point, not the jobs')."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.stats import rss_mib
from tako_vm.testing import free_port

SUBMITTERS = 8


def shim_argv(tree: Path | None, config: Path, port: int) -> tuple[list[str], dict[str, str]]:
    from bench.operator_bench import operator_argv

    argv, env = operator_argv(tree, config, "unused")
    start = argv.index("operator")
    env["TAKO_VM_CONFIG"] = str(config)  # both trees read it (the baseline's CLI has no `server -c`)
    return [*argv[:start], "server", "--backend", "kubernetes", "--port", str(port)], env


def _write_config(root: Path, kube: Any, port: int) -> Path:
    config = root / "tako_vm.yaml"
    settings = {
        "backend": "kubernetes",
        "server_port": port,
        "api_rate_limit_enabled": False,
        "max_queue_size": 10_000,  # no operator runs here: every job stays queued
        "data_dir": str(root / "data"),
        "kubernetes": {"namespace": kube.namespace, "kubeconfig": str(kube.kubeconfig(root))},
    }
    config.write_text(json.dumps(settings))  # JSON is YAML
    return config


def _burst(http: httpx.Client, size: int) -> list[str]:
    def one(_: int) -> str:
        response = http.post("/execute/async", json={"code": "print(1)", "timeout": 30})
        response.raise_for_status()
        job_id = str(response.json()["job_id"])
        http.get(f"/jobs/{job_id}").raise_for_status()
        return job_id

    with ThreadPoolExecutor(SUBMITTERS) as pool:
        return list(pool.map(one, range(size)))


def run_shim(root: Path, size: int, tree: Path | None) -> dict[str, Any]:
    from bench.operator_bench import _fast_harness

    root.mkdir(parents=True, exist_ok=True)
    with _fast_harness("tako-bench") as kube:
        port = free_port()
        argv, env = shim_argv(tree, _write_config(root, kube, port), port)
        log = (root / "shim.log").open("wb")
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        rss: dict[str, Any] = {}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if http.get("/health").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(f"the shim did not start; see {root / 'shim.log'}")
                    time.sleep(0.2)
                _burst(http, 5)
                time.sleep(1.0)
                rss["at_rest"] = rss_mib(process.pid)
                started = time.perf_counter()
                first = _burst(http, size)
                rss["submit_s_first"] = round(time.perf_counter() - started, 2)
                time.sleep(1.0)
                rss["after_first"] = rss_mib(process.pid)
                for job_id in first:
                    kube.delete("pythonjobs", job_id)
                time.sleep(2.0)
                rss["after_deleting"] = rss_mib(process.pid)
                started = time.perf_counter()
                _burst(http, size)
                rss["submit_s_repeat"] = round(time.perf_counter() - started, 2)
                time.sleep(1.0)
                rss["after_repeat"] = rss_mib(process.pid)
                rss["growth_over_repeat"] = round(rss["after_repeat"] - rss["after_first"], 1)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
    return rss


def shim_kubernetes_suite(root: Path, size: int, tree: Path | None) -> dict[str, Any]:
    """Both trees (this one, and `tree` when there is one), in random order; a tree whose shim cannot
    run is reported as such rather than failing the operator suite."""
    order = ["current", "baseline"] if tree is not None else ["current"]
    random.shuffle(order)
    runs: dict[str, Any] = {}
    for name in order:
        try:
            runs[name] = run_shim(root / f"shim-{name}", size, None if name == "current" else tree)
        except Exception as exc:  # the baseline tree's shim may not take this config
            print(f"shim kubernetes backend ({name}) not measured: {exc!r}", file=sys.stderr)
            runs[name] = {"error": repr(exc)[:300]}
    return {"size": size, "order": order, "runs": runs}
