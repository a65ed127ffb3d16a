"""The seed document's snippets (docs "Agent Integration"), verbatim in examples/run_python_tool.py,
run with our SDK against a real server process (local backend, runsc sandboxes).

The snippet's own `tako_vm.configure("http://localhost:8000")` runs verbatim at import; the fixture
then points the default client at the test server's port.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import pytest
from sandbox_server import ROOT, SANDBOX_TESTS, strict_server

FIB50 = "a, b = 0, 1\nfor _ in range(50):\n    a, b = b, a + b\nprint(a)\n"

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    with strict_server(tmp_path_factory, "seed-server") as server:
        sys.path.insert(0, str(ROOT / "examples"))
        # The SDK module the snippet imports (tests/unit/test_layout.py may have re-imported tako_vm).
        sdk = importlib.import_module("tako_vm")
        try:
            sys.modules.pop("run_python_tool", None)  # import afresh so the seed's configure() line runs now
            sdk.configure("http://127.0.0.1:9")
            module = importlib.import_module("run_python_tool")
            assert module.tako_vm is sdk
            assert sdk.get_client().config.base_url == "http://localhost:8000"  # the seed's own line ran
            sdk.configure(server.url)
            yield module
        finally:
            sys.path.remove(str(ROOT / "examples"))
            sdk.configure()


def test_run_python_returns_the_50th_fibonacci_number(seed: ModuleType) -> None:
    assert seed.run_python(FIB50) == "12586269025\n"


def test_a_failing_snippet_returns_the_traceback_text(seed: ModuleType) -> None:
    text = seed.run_python("def f(x):\n    return 1 / x\n\nprint(f(0))\n")
    assert text.startswith("Execution failed.\nstderr:\nTraceback (most recent call last):")
    assert 'File "/code/main.py", line 4, in <module>' in text
    assert "ZeroDivisionError: division by zero" in text
    assert "error: {'type': '" in text and "'phase': 'execution'" in text


def test_no_output_is_reported_as_such(seed: ModuleType) -> None:
    assert seed.run_python("x = 1") == "(no output)"


async def test_arun_python_keeps_the_event_loop_free(seed: ModuleType) -> None:
    sdk = seed.tako_vm
    beats: list[float] = []

    async def ticker() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)

    # Made before the ticker starts: building an httpx client loads TLS certificates synchronously.
    async with sdk.AsyncClient(sdk.get_client().config.base_url) as client:
        beat = asyncio.create_task(ticker())
        started = time.monotonic()
        threaded, native = await asyncio.gather(
            seed.arun_python("import time\ntime.sleep(3)\nprint('thread')"),
            seed.arun_python_native("import time\ntime.sleep(3)\nprint('native')", client=client),
        )
        assert time.monotonic() - started >= 3
        beat.cancel()
    assert (threaded, native) == ("thread\n", "native\n")
    # A blocking wait would stall the loop for the whole 3+ s job; allow for a heavily loaded machine.
    longest_stall = max(b - a for a, b in itertools.pairwise(beats))
    assert longest_stall < 1.5, f"event loop stalled {longest_stall:.2f}s"


def test_history_rerun_and_fork_from_the_seed_text(seed: ModuleType) -> None:
    """The seed's "Concurrency and history": list_executions(), rerun(job_id), fork."""
    sdk = seed.tako_vm
    job_id = sdk.submit_code("print('audited')", requirements=[], timeout=60)
    assert sdk.get_result(job_id, timeout=120)["stdout"] == "audited\n"
    assert job_id in {item["execution_id"] for item in sdk.list_executions()["items"]}
    again = sdk.get_result(sdk.rerun(job_id), timeout=120)
    forked = sdk.get_result(sdk.fork(job_id, "print('forked')"), timeout=120)
    assert (again["stdout"], forked["stdout"]) == ("audited\n", "forked\n")
