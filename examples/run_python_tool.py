"""The seed's core agent tool from docs "Agent Integration": `run_python(code, requirements)`.

Everything else in examples/ wraps this function. The server is $TAKO_VM_URL (as for the `tako-vm`
CLI), else http://localhost:8000; `tako_vm.configure(url)` after import points it elsewhere.
Following the seed's rule ("return the error text, never raise"), a request the server refuses
(e.g. `requirements` on a server with allow_runtime_requirements off) or cannot take comes back to
the model as text too: an exception would end the agent's run (LangChain's ToolNode re-raises it).
"""

import asyncio
import os

import tako_vm

# add headers={"X-API-Key": ...} (or set TAKO_VM_API_KEY) if auth is enabled
tako_vm.configure(os.environ.get("TAKO_VM_URL", "http://localhost:8000"))


def refused(exc: tako_vm.TakoVMError) -> str:
    """The tool's answer when the job could not be submitted or awaited."""
    return f"Execution could not run.\nerror: {exc}"


def run_python(code: str, requirements: list[str] | None = None) -> str:
    """Execute Python in a Tako VM sandbox and return its output."""
    try:
        job_id = tako_vm.submit_code(
            code,
            requirements=requirements or [],
            timeout=60,
        )
        record = tako_vm.get_result(job_id, timeout=120)
    except tako_vm.TakoVMError as exc:
        return refused(exc)
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
    try:
        job_id = await client.submit_code(code, requirements=requirements or [], timeout=60)
        record = await client.get_result(job_id, timeout=120)
    except tako_vm.TakoVMError as exc:
        return refused(exc)
    if record["status"] == "succeeded":
        return record["stdout"] or "(no output)"
    return (
        f"Execution {record['status']}.\n"
        f"stderr:\n{record.get('stderr', '')}\n"
        f"error: {record.get('error', '')}"
    )


if __name__ == "__main__":
    print(run_python("a, b = 0, 1\nfor _ in range(50):\n    a, b = b, a + b\nprint(a)"))
