"""The seed's core agent tool, verbatim from docs "Agent Integration": `run_python(code, requirements)`.

Everything else in examples/ wraps this function. Point it at another server with
`tako_vm.configure(url)` after import (the tests do), or set the URL below.
"""

import asyncio

import tako_vm

tako_vm.configure("http://localhost:8000")  # add headers={"X-API-Key": ...} if auth is enabled


def run_python(code: str, requirements: list[str] | None = None) -> str:
    """Execute Python in a Tako VM sandbox and return its output."""
    job_id = tako_vm.submit_code(
        code,
        requirements=requirements or [],
        timeout=60,
    )
    record = tako_vm.get_result(job_id, timeout=120)
    if record["status"] == "succeeded":
        return record["stdout"] or "(no output)"
    # Surface the failure to the model — tracebacks are how agents self-correct.
    return (
        f"Execution {record['status']}.\n"
        f"stderr:\n{record.get('stderr', '')}\n"
        f"error: {record.get('error', '')}"
    )


async def arun_python(code: str, requirements: list[str] | None = None) -> str:
    """The seed's asyncio wrapper: the blocking call runs on a worker thread, the event loop stays free."""
    return await asyncio.to_thread(run_python, code, requirements)


async def arun_python_native(
    code: str, requirements: list[str] | None = None, *, client: tako_vm.AsyncClient
) -> str:
    """The same tool on `tako_vm.AsyncClient`: no thread at all, the long-poll is awaited."""
    job_id = await client.submit_code(code, requirements=requirements or [], timeout=60)
    record = await client.get_result(job_id, timeout=120)
    if record["status"] == "succeeded":
        return record["stdout"] or "(no output)"
    return (
        f"Execution {record['status']}.\n"
        f"stderr:\n{record.get('stderr', '')}\n"
        f"error: {record.get('error', '')}"
    )


if __name__ == "__main__":
    print(run_python("a, b = 0, 1\nfor _ in range(50):\n    a, b = b, a + b\nprint(a)"))
