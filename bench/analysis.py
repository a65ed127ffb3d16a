"""Pure analysis of load runs: closed-loop throughput windows, queue bursts and their growth.

Everything here works on plain data (timestamps, record dicts, CPU counters) so that the unit tests
can check the arithmetic without a server.

The physics the queue numbers are read against: a FIFO queue drained at a constant throughput X makes
the job in the middle of a burst of Q wait about Q / (2 X) before its turn, then spend the service time
S (dequeued -> result). So end-to-end p50 ~= Q / (2 X) + S: linear in Q by nature. What a long queue
must *not* do is make each job more expensive: S, the submit latency, the host CPU per job and X must
stay flat (or improve) as Q grows. ``queue_growth`` prints both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bench.stats import markdown_table, ratio, summarize

# A product whose per-job cost "stays flat" may still wobble on a shared machine: allow this much.
FLAT_TOLERANCE = 1.25


def iso_seconds(value: str) -> float:
    """An ISO 8601 timestamp (``Z`` or an offset) as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def parse_proc_cpu(stat_text: str, ticks_per_second: int) -> tuple[float, float]:
    """(own CPU s, reaped children's CPU s) from the text of ``/proc/<pid>/stat``.

    Fields 14-17 (utime, stime, cutime, cstime) follow the parenthesised command name, which may itself
    contain spaces or parentheses: split after the last ``)``.
    """
    fields = stat_text.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / ticks_per_second, (cutime + cstime) / ticks_per_second


def process_cpu(pid: int) -> tuple[float, float] | None:
    """(own, reaped children) CPU seconds of a live process; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return parse_proc_cpu(text, os.sysconf("SC_CLK_TCK"))


def cpu_per_job_ms(
    before: tuple[float, float] | None, after: tuple[float, float] | None, jobs: int
) -> dict[str, float] | None:
    """Server CPU per job (own Python) and sandbox CPU per job (runsc and all it started, reaped)."""
    if before is None or after is None or jobs <= 0:
        return None
    own = (after[0] - before[0]) * 1000 / jobs
    sandboxes = (after[1] - before[1]) * 1000 / jobs
    return {
        "server_ms": round(own, 1),
        "sandboxes_ms": round(sandboxes, 1),
        "total_ms": round(own + sandboxes, 1),
    }


def closed_loop_window(
    rounds: Sequence[tuple[float, float]], clients: int, window: tuple[float, float]
) -> dict[str, Any]:
    """Steady-state figures of a closed loop (each client: submit, wait, repeat; no think time).

    ``rounds`` are (started, ended) of every round trip on one clock; only rounds that *ended* inside
    ``window`` count, so the ramp-up and the drain at the edges stay out. ``littles_law`` is
    X * mean latency / clients: a closed loop without think time keeps exactly ``clients`` jobs in
    the system, so it is ~1 when throughput and latency were measured consistently (below 1: the
    clients spent time outside round trips).
    """
    low, high = window
    if high <= low:
        raise ValueError("the measurement window is empty")
    done = [(s, e) for s, e in rounds if low < e <= high]  # half-open: back-to-back windows add up
    seconds = high - low
    result: dict[str, Any] = {
        "clients": clients,
        "window_s": round(seconds, 2),
        "jobs": len(done),
        "jobs_per_s": round(len(done) / seconds, 3),
    }
    if done:
        latencies = [e - s for s, e in done]
        result["latency"] = summarize(latencies)
        mean_s = sum(latencies) / len(latencies)
        result["littles_law"] = round(result["jobs_per_s"] * mean_s / clients, 3)
    return result


def queue_burst(
    size: int,
    records: Sequence[Mapping[str, Any]],
    submit_s: Sequence[float],
    cpu: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One burst of ``size`` jobs submitted at once, from the server's records of those jobs.

    Per job (server clock): wait = created -> started (dequeued), service = started -> ended (result
    known), end-to-end = created -> ended. Throughput = finished jobs / (last end - first created).
    """
    finished = [r for r in records if r.get("status") == "succeeded"]
    result: dict[str, Any] = {
        "queued": size,
        "finished": len(finished),
        "lost": size - len(finished),
        "statuses": sorted({str(r.get("status")) for r in records}),
        "submit": summarize(submit_s) if submit_s else None,
        "cpu_per_job": cpu,
    }
    if not finished:
        return result
    created = [iso_seconds(r["created_at"]) for r in finished]
    started = [iso_seconds(r["started_at"]) for r in finished]
    ended = [iso_seconds(r["ended_at"]) for r in finished]
    span = max(max(ended) - min(created), 1e-6)
    throughput = len(finished) / span
    service = summarize([e - s for s, e in zip(started, ended, strict=True)])
    end_to_end = summarize([e - c for c, e in zip(created, ended, strict=True)])
    # The FIFO prediction for the median job: half the burst ahead of it at the measured throughput.
    model_ms = (size / 2) / throughput * 1000 + service["p50_ms"]
    result.update(
        {
            "span_s": round(span, 2),
            "jobs_per_s": round(throughput, 3),
            "wait": summarize([s - c for c, s in zip(created, started, strict=True)]),
            "service": service,
            "end_to_end": end_to_end,
            "fifo_model_p50_ms": round(model_ms, 1),
            "end_to_end_over_fifo_model": ratio(end_to_end["p50_ms"], model_ms),
        }
    )
    return result


def queue_growth(small: Mapping[str, Any], big: Mapping[str, Any]) -> dict[str, Any]:
    """Ratios big / small of every per-job figure, and the targets they are held to."""
    queue_ratio = big["queued"] / small["queued"]
    none_lost = small["lost"] == 0 and big["lost"] == 0
    if "service" not in small or "service" not in big:  # a burst where nothing finished
        return {
            "growth": {"queue_ratio": round(queue_ratio, 3)},
            "targets": {
                "none_lost": none_lost,
                "per_job_cost_flat": False,
                "end_to_end_p50_sub_linear": False,
            },
        }
    growth: dict[str, Any] = {
        "queue_ratio": round(queue_ratio, 3),
        "submit_p50_ratio": ratio(big["submit"]["p50_ms"], small["submit"]["p50_ms"]),
        "service_p50_ratio": ratio(big["service"]["p50_ms"], small["service"]["p50_ms"]),
        "throughput_ratio": ratio(big["jobs_per_s"], small["jobs_per_s"]),
        "end_to_end_p50_ratio": ratio(big["end_to_end"]["p50_ms"], small["end_to_end"]["p50_ms"]),
    }
    if small.get("cpu_per_job") and big.get("cpu_per_job"):
        growth["server_cpu_per_job_ratio"] = ratio(
            big["cpu_per_job"]["server_ms"], small["cpu_per_job"]["server_ms"]
        )
        growth["total_cpu_per_job_ratio"] = ratio(
            big["cpu_per_job"]["total_ms"], small["cpu_per_job"]["total_ms"]
        )
    if small.get("status_of_last_job") and big.get("status_of_last_job"):
        growth["status_p50_ratio"] = ratio(
            big["status_of_last_job"]["p50_ms"], small["status_of_last_job"]["p50_ms"]
        )
    per_job_flat = (
        growth["service_p50_ratio"] <= FLAT_TOLERANCE
        and growth["submit_p50_ratio"] <= FLAT_TOLERANCE
        and growth["throughput_ratio"] >= 1 / FLAT_TOLERANCE
        and growth.get("server_cpu_per_job_ratio", 1.0) <= FLAT_TOLERANCE
    )
    targets = {
        "none_lost": none_lost,
        "per_job_cost_flat": per_job_flat,
        "end_to_end_p50_sub_linear": growth["end_to_end_p50_ratio"] < queue_ratio,
    }
    return {"growth": growth, "targets": targets}


QUEUE_HEADER = [
    "queued at once",
    "finished / lost",
    "submit p50 ms",
    "in service p50 ms",
    "jobs/s",
    "CPU ms/job",
    "server CPU ms/job",
    "GET status of last queued p50 ms",
    "end-to-end p50 ms",
    "end-to-end / FIFO model",
]


def queue_table(small: Mapping[str, Any], big: Mapping[str, Any], growth: Mapping[str, Any]) -> str:
    """Both bursts side by side, then the row of big / small ratios."""

    def row(b: Mapping[str, Any]) -> list[Any]:
        cpu = b.get("cpu_per_job") or {}
        figures = [
            (b.get("submit") or {}).get("p50_ms", "-"),
            b.get("service", {}).get("p50_ms", "-"),
            b.get("jobs_per_s", "-"),
            cpu.get("total_ms", "-"),
            cpu.get("server_ms", "-"),
            (b.get("status_of_last_job") or {}).get("p50_ms", "-"),
            b.get("end_to_end", {}).get("p50_ms", "-"),
            b.get("end_to_end_over_fifo_model", "-"),
        ]
        return [b["queued"], f"{b['finished']} / {b['lost']}", *figures]

    keys = ["submit_p50_ratio", "service_p50_ratio", "throughput_ratio", "total_cpu_per_job_ratio"]
    keys += ["server_cpu_per_job_ratio", "status_p50_ratio", "end_to_end_p50_ratio"]
    ratios = [f"ratio (queue x{growth['queue_ratio']:g})", "", *(growth.get(k, "-") for k in keys), ""]
    return markdown_table(QUEUE_HEADER, [row(small), row(big), ratios])


def throughput_table(levels: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, float]]:
    """One row per client count, and jobs/s of each level over 1 client's."""
    base = levels["1"]["jobs_per_s"] if "1" in levels else 0
    rows = [
        [
            clients,
            v["jobs"],
            v["jobs_per_s"],
            ratio(v["jobs_per_s"], base) if base else "-",
            v.get("latency", {}).get("p50_ms", "-"),
            v.get("littles_law", "-"),
            (v.get("cpu_per_job") or {}).get("total_ms", "-"),
        ]
        for clients, v in levels.items()
    ]
    header = ["clients", "jobs in window", "jobs/s", "vs 1 client", "p50 ms", "X*W/clients", "CPU ms/job"]
    ratios = {
        f"jobs_per_s_{c}_over_1": ratio(v["jobs_per_s"], base) for c, v in levels.items() if base and c != "1"
    }
    return markdown_table(header, rows), ratios
