"""Side by side with the reference Tako VM 0.3.0 (issue #20), in one run: our server (``tako-vm
server``, the shipped defaults: snapshots on, the shipped pool, ``max_workers`` derived from the
machine) and the reference server (PyPI ``tako-vm==0.3.0``: one ``docker run --runtime=runsc`` of its
executor image per job, here through ``podman system service`` with runsc, PostgreSQL for its job
records; its shipped defaults: 4 workers), both up at the same time:

- throughput: ``print(1)`` through ``POST /execute`` from 4 concurrent HTTP clients (the same plain
  httpx calls for both servers), a warm-up then a fixed window; jobs/s = jobs finished inside the
  window / the window;
- CPU-s per job over each whole loop (warm-up + window + 2 s of settling, divided by every job of the
  loop);
- a lone job's latency (``POST /execute`` round trip), interleaved rounds, one job at a time.

How CPU is counted, identically for both: each server is started under ``python -m bench.subreaper``
(``PR_SET_CHILD_SUBREAPER``), so that whatever it starts (runsc and its sandboxes for ours; for the
reference its ``docker`` CLI calls, the podman service, each job's conmon, runsc and sandbox, and
PostgreSQL) stays in the subreaper's tree even when it daemonizes: orphans are reparented to, and
reaped by, the subreaper instead of init. The CPU of a server is ``bench.proctree.tree_cpu`` of its
subreaper (utime+stime+cutime+cstime over the subreaper and its live descendants), so exited
processes are counted too. For the reference the part spent in PostgreSQL (the postmaster's tree) is
also reported on its own. The server not being measured idles meanwhile and is not counted.

Needs ``make reference-setup`` (scripts/setup-reference.sh); without it the suite prints why and
returns a skipped result instead of failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.harness import BASE_SETTINGS, CODE, REPO, TOOLS_PATH, closed_loop
from bench.latency_parts import interleaved
from bench.proctree import tree_cpu
from bench.stats import markdown_table, ratio, summarize
from tako_vm.testing import free_port

STATE = Path("/var/lib/tako-ref")
RUN = Path("/run/tako-ref")
VENV = REPO / ".tools" / "reference-venv"
RUNSC = REPO / ".tools" / "bin" / "runsc"
PGBIN = Path("/usr/lib/postgresql/15/bin")
PGPORT = 55432
CLIENTS = 4
SETTLE_S = 2.0
STARTUP_S = 180.0
TEMPLATE_WAIT_S = 600.0
TARGETS = {"cpu_per_job_ours_over_reference": 0.5, "jobs_per_s_ours_over_reference": 2.0}


def missing_setup() -> str | None:
    """Why the reference cannot run here, or None."""
    for path, what in (
        (STATE / "ready", "scripts/setup-reference.sh has not completed"),
        (VENV / "bin" / "tako-vm", "no reference venv"),
        (RUNSC, "no .tools/bin/runsc (make setup)"),
        (PGBIN / "postgres", "no PostgreSQL 15"),
    ):
        if not path.exists():
            return f"{what} ({path} missing): run `make reference-setup`"
    if os.geteuid() != 0:
        return "needs root (podman, runsc, postgres)"
    return None


def compare(ours: dict[str, float], reference: dict[str, float]) -> dict[str, Any]:
    """Ratios (ours / reference) of CPU-s per job and jobs/s, and whether each meets issue #20's target."""
    ratios = {
        "cpu_per_job_ours_over_reference": ratio(ours["cpu_per_job_s"], reference["cpu_per_job_s"]),
        "jobs_per_s_ours_over_reference": ratio(ours["jobs_per_s"], reference["jobs_per_s"]),
        "lone_job_p50_ours_over_reference": ratio(ours["lone_p50_ms"], reference["lone_p50_ms"]),
    }
    targets = {
        "cpu_per_job_at_most_0_5x": ratios["cpu_per_job_ours_over_reference"]
        <= TARGETS["cpu_per_job_ours_over_reference"],
        "jobs_per_s_at_least_2x": ratios["jobs_per_s_ours_over_reference"]
        >= TARGETS["jobs_per_s_ours_over_reference"],
    }
    return {"ratios": ratios, "targets": targets}


def rows(name: str, m: dict[str, Any]) -> list[list[Any]]:
    row = [
        name,
        f"{m['jobs_per_s']:.2f}",
        f"{m['cpu_per_job_s']:.3f} (machine {m['machine_cpu_per_job_s']:.3f})",
        f"{m['lone_p50_ms']:.0f} (p95 {m['lone_p95_ms']:.0f}, n {m['lone_n']})",
        f"{m['jobs_in_window']} / {m['jobs_all']}",
    ]
    return [row]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy in {STARTUP_S:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def _served(argv: list[str], env: dict[str, str], log: Path, url: str) -> Iterator[int]:
    """``argv`` under ``python -m bench.subreaper``; yields the subreaper's pid once ``url`` is healthy."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.subreaper", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        _wait_healthy(url, proc, log)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(2)  # SIGINT: both servers shut down cleanly on it
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _ours(root: Path) -> tuple[list[str], dict[str, str], Path, str]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"backend": "local", "data_dir": str(root / "state"), **BASE_SETTINGS}
    (root / "tako_vm.yaml").write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAKO_VM_")}
    env["PATH"] = TOOLS_PATH
    argv = [sys.executable, "-m", "tako_shim", "--config", str(root / "tako_vm.yaml")]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    return argv, env, root / "server.log", f"http://127.0.0.1:{port}"


REFERENCE_LAUNCH = r"""
set -euo pipefail
mkdir -p "$RUN"; chown postgres "$RUN"
rm -f "$RUN/podman.sock"
setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/postgres" -D "$STATE/pgdata" -p "$PGPORT" \
    -k "$RUN" -c listen_addresses=127.0.0.1 >"$STATE/pgdata/bench.log" 2>&1 &
podman system service --time=0 "unix://$RUN/podman.sock" >"$RUN/podman-bench.log" 2>&1 &
for _ in $(seq 300); do
    [ -S "$RUN/podman.sock" ] && "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break
    sleep 0.1
done
exec "$VENV/bin/tako-vm" server --no-auto-start-postgres --host 127.0.0.1 --port "$PORT"
"""


def _reference(root: Path) -> tuple[list[str], dict[str, str], Path, str]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAKO_VM_")}
    env.update(
        PATH=f"{VENV / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        DOCKER_HOST=f"unix://{RUN / 'podman.sock'}",
        CONTAINERS_CONF=str(STATE / "etc" / "containers.conf"),
        CONTAINERS_STORAGE_CONF=str(STATE / "etc" / "storage.conf"),
        TAKO_VM_CONFIG=str(STATE / "tako_vm.yaml"),
        STATE=str(STATE),
        RUN=str(RUN),
        PGBIN=str(PGBIN),
        PGPORT=str(PGPORT),
        VENV=str(VENV),
        PORT=str(port),
    )
    return ["bash", "-c", REFERENCE_LAUNCH], env, root / "server.log", f"http://127.0.0.1:{port}"


def machine_busy_s(stat_text: str, ticks_per_second: int) -> float:
    """Busy CPU seconds of the whole machine since boot from ``/proc/stat``'s ``cpu`` line: every field
    but idle and iowait (guest time is already inside user/nice)."""
    fields = [int(v) for v in stat_text.splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / ticks_per_second


def _machine_busy() -> float:
    with open("/proc/stat") as handle:
        return machine_busy_s(handle.read(), os.sysconf("SC_CLK_TCK"))


def _postmaster_pid() -> int | None:
    try:
        return int((STATE / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _job(http: httpx.Client) -> float:
    started = time.perf_counter()
    response = http.post("/execute", json={"code": CODE})
    elapsed = time.perf_counter() - started
    body = response.json() if response.status_code == 200 else {}
    if not body.get("success") or body.get("stdout") != "1\n":
        raise RuntimeError(f"job failed: HTTP {response.status_code} {response.text[:500]}")
    return elapsed


def _client_job(pool: list[httpx.Client], i: int) -> float:
    return _job(pool[i])


def _wait_template(state: Path, http: httpx.Client) -> None:
    """Our server's first jobs build its snapshot template: run jobs until it exists."""
    deadline = time.monotonic() + TEMPLATE_WAIT_S
    while not list((state / "snapshots").glob("*/meta.json")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no snapshot template after {TEMPLATE_WAIT_S:.0f} s")
        _job(http)
        time.sleep(1.0)


def reference_suite(root: Path, quick: bool) -> dict[str, Any]:
    reason = missing_setup()
    if reason is not None:
        print(f"reference: skipped: {reason}", flush=True)
        return {"skipped": reason, "table": f"skipped: {reason}"}
    warmup_s, window_s = (3.0, 15.0) if quick else (5.0, 30.0)
    rounds = 7 if quick else 21
    ours_argv, ours_env, ours_log, ours_url = _ours(root / "ours")
    ref_argv, ref_env, ref_log, ref_url = _reference(root / "reference")
    measured: dict[str, dict[str, Any]] = {}
    with (
        _served(ours_argv, ours_env, ours_log, ours_url) as ours_pid,
        _served(ref_argv, ref_env, ref_log, ref_url) as ref_pid,
    ):
        clients = {
            name: [httpx.Client(base_url=url, timeout=120) for _ in range(CLIENTS)]
            for name, url in (("ours", ours_url), ("reference", ref_url))
        }
        max_workers = {
            name: clients[name][0].get("/health").json().get("queue_stats", {}).get("max_workers")
            for name in clients
        }
        _wait_template(root / "ours" / "state", clients["ours"][0])
        for _ in range(3):  # the reference: first docker run, podman's image and runtime lookups
            _job(clients["reference"][0])
        pids = {"ours": ours_pid, "reference": ref_pid}
        for name in ("reference", "ours"):
            http = clients[name]
            pg = _postmaster_pid() if name == "reference" else None
            cpu0, pg0, busy0 = tree_cpu([pids[name]]), tree_cpu([pg]) if pg else 0.0, _machine_busy()
            jobs, window, all_jobs = closed_loop(partial(_client_job, http), CLIENTS, warmup_s, window_s)
            time.sleep(SETTLE_S)
            cpu, busy = tree_cpu([pids[name]]) - cpu0, _machine_busy() - busy0
            measured[name] = {
                "max_workers": max_workers[name],
                "jobs_in_window": jobs,
                "jobs_all": all_jobs,
                "jobs_per_s": jobs / window,
                "cpu_per_job_s": cpu / max(1, all_jobs),
                # cross-check: the whole machine's busy CPU over the same loop (includes this bench's
                # clients, the idle other server and anything else running on the host)
                "machine_cpu_per_job_s": busy / max(1, all_jobs),
            }
            if pg:
                measured[name]["postgres_cpu_per_job_s"] = (tree_cpu([pg]) - pg0) / max(1, all_jobs)
        lone = interleaved(
            {name: partial(_job, clients[name][0]) for name in clients},
            rounds,
            0.3,
        )
        for pool in clients.values():
            for one in pool:
                one.close()
    for name, samples in lone.items():
        s = summarize(samples)
        measured[name].update(lone_p50_ms=s["p50_ms"], lone_p95_ms=s["p95_ms"], lone_n=s["n"])
    result = compare(measured["ours"], measured["reference"])
    ours_name = f"ours (tako-vm server, max_workers {measured['ours']['max_workers']})"
    table_rows = rows(ours_name, measured["ours"])
    pg_ms = measured["reference"].get("postgres_cpu_per_job_s", 0.0) * 1000
    table_rows += rows(
        f"reference 0.3.0 (podman + runsc, max_workers {measured['reference']['max_workers']}; "
        f"of its CPU/job PostgreSQL's {pg_ms:.1f} ms)",
        measured["reference"],
    )
    header = ["server", "jobs/s (4 clients)", "CPU-s/job (whole machine)", "lone job p50 ms"]
    header.append("jobs in window / loop")
    table = markdown_table(header, table_rows)
    return {
        "warmup_s": warmup_s,
        "window_s": window_s,
        "rounds": rounds,
        "clients": CLIENTS,
        "measured": measured,
        **result,
        "table": table,
    }
