"""Session latencies as ratios to a one-shot job, measured side by side in one run on one machine.

    python -m bench.sessions [--runs N]

Starts the real local backend (runsc, warm pool off) in a temporary data dir and prints p50s of:
- a one-shot job (`submit` -> terminal record, the reference);
- execute on a live session (`POST /sessions/{id}/execute` of the same small code);
- the first execute after a pause (`runsc checkpoint` to disk, then `runsc restore` on the call).
Ratios below 1.0 mean faster than a one-shot job.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from tako_shim.backends.local.backend import LocalBackend
from tako_shim.config import Settings
from tako_shim.submission import JobResolver
from tako_vm.models.sessions import CreateSessionRequest, SessionExecuteRequest
from tako_vm.models.wire import ExecuteRequest

CODE = "x = sum(range(1000))\nprint(x)"


async def measure(runs: int) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix="tako-bench-sessions-"))
    settings = Settings(data_dir=data, warm_pool_size=0, session_pause_after_seconds=None)
    backend = LocalBackend(settings)
    await backend.start()
    try:
        jobs, live, resumed = [], [], []
        resolver = JobResolver(settings)
        service = backend.sessions
        info, _ = await service.create("bench", CreateSessionRequest())
        sid = info.session_id
        for _ in range(runs):
            started = time.perf_counter()
            submitted = await backend.submit("bench", resolver.resolve(ExecuteRequest(code=CODE)))
            await backend.wait_for("bench", submitted.job_id, 120)
            jobs.append(time.perf_counter() - started)
            started = time.perf_counter()
            await service.execute("bench", sid, SessionExecuteRequest(code=CODE), None)
            live.append(time.perf_counter() - started)
            state = service.sessions[sid]
            async with service._lock(sid):
                paused = await service._pause(state)
            assert paused, "runsc checkpoint failed"
            started = time.perf_counter()
            await service.execute("bench", sid, SessionExecuteRequest(code=CODE), None)
            resumed.append(time.perf_counter() - started)
        await service.delete("bench", sid)
    finally:
        await backend.close()
    return {
        "job_p50_ms": statistics.median(jobs) * 1000,
        "session_execute_p50_ms": statistics.median(live) * 1000,
        "resume_execute_p50_ms": statistics.median(resumed) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions")
    parser.add_argument("--runs", type=int, default=10)
    found = asyncio.run(measure(parser.parse_args().runs))
    job = found["job_p50_ms"]
    print(f"one-shot job           p50 {job:8.1f} ms  (1.00x)")
    print(
        f"live session execute   p50 {found['session_execute_p50_ms']:8.1f} ms  "
        f"({found['session_execute_p50_ms'] / job:.3f}x of a job)"
    )
    print(f"execute after a pause  p50 {found['resume_execute_p50_ms']:8.1f} ms  "
          f"({found['resume_execute_p50_ms'] / job:.3f}x of a job)")  # fmt: skip


if __name__ == "__main__":
    main()
