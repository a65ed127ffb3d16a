"""Stateful sessions on the local backend, over HTTP, on real gVisor (docs/sessions.md).

Each test starts the real shim with the real local backend (runsc, cgroups) on a free port in a
temporary data dir; two API keys give two tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from tako_shim.backends.local.backend import LocalBackend
from tako_shim.backends.local.sessions_spec import container_id
from tako_shim.config import Settings
from tako_shim.http.app import create_app

REPO = Path(__file__).resolve().parents[2]
A = {"X-API-Key": "key-tenant-a-0123456789"}
B = {"X-API-Key": "key-tenant-b-0123456789"}


class Shim:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend = LocalBackend(settings)
        self.server = TestServer(create_app(settings, self.backend), host="127.0.0.1")

    async def __aenter__(self) -> Shim:
        await self.server.start_server()
        self.http = httpx.AsyncClient(base_url=str(self.server.make_url("")), timeout=120)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.server.close()

    async def new(self, headers: dict[str, str] = A, **body: Any) -> str:
        response = await self.http.post("/sessions", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return str(response.json()["session_id"])

    async def run(self, sid: str, code: str, headers: dict[str, str] = A, **extra: Any) -> dict[str, Any]:
        response = await self.http.post(
            f"/sessions/{sid}/execute", json={"code": code, **extra}, headers=headers
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def container_exists(self, sid: str) -> bool:
        state = Path(self.backend.sessions.state_root)
        return any(state.glob(f"{container_id(sid)}*"))


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "security_mode": "strict",
        "warm_pool_size": 0,
        "max_workers": 1,
        "api_auth_enabled": True,
        "api_keys": {"key-tenant-a-0123456789": "tenant-a", "key-tenant-b-0123456789": "tenant-b"},
        "session_pause_after_seconds": None,
        "api_rate_limit_enabled": False,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(autouse=True)
def _runsc_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{REPO / '.tools' / 'bin'}:/usr/bin:/bin")


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[Shim]:
    async with Shim(settings_for(tmp_path)) as running:
        if running.backend.sessions is None:
            pytest.skip("runsc cannot start a sandbox here")
        yield running


async def wait_until(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


async def test_state_persists_with_notebook_results_and_audit_trail(shim: Shim) -> None:
    sid = await shim.new()
    first = await shim.run(
        sid, "import math\nx = 20\ndef double(v):\n    return 2 * v\nopen('notes.txt', 'w').write('kept')"
    )
    assert first["status"] == "succeeded" and first["result"] == "4", first
    second = await shim.run(sid, "print('hi')\ndouble(x) + 2")
    assert second["stdout"] == "hi\n" and second["result"] == "42", second
    third = await shim.run(sid, "y = open('notes.txt').read()")  # a statement last: no result
    assert third["result"] is None
    assert (await shim.run(sid, "y, math.pi > 3"))["result"] == "('kept', True)"
    failed = await shim.run(sid, "1 / 0")
    assert failed["status"] == "failed" and failed["error"]["type"] == "ZeroDivisionError"
    assert "1 / 0" in failed["error"]["traceback"]
    info = (await shim.http.get(f"/sessions/{sid}", headers=A)).json()
    assert info["executions"] == 5 and info["status"] == "ready"
    page = (await shim.http.get("/executions", headers=A)).json()
    mine = [item for item in page["items"] if item.get("session_id") == sid]
    assert len(mine) == 5 and {i["status"] for i in mine} == {"succeeded", "failed"}
    assert failed["execution_id"] in {i["execution_id"] for i in mine}
    only = (await shim.http.get("/executions", params={"session_id": sid}, headers=A)).json()["items"]
    assert [i["execution_id"] for i in only] == [i["execution_id"] for i in mine], "?session_id= filters"


async def test_sessions_are_isolated_and_tenant_scoped(shim: Shim) -> None:
    one, two = await shim.new(), await shim.new()
    await shim.run(one, "secret = 'one'\nopen('/tmp/f', 'w').write('one')")
    other = await shim.run(two, "import os\n('secret' in globals(), os.path.exists('/tmp/f'))")
    assert other["result"] == "(False, False)"
    assert (await shim.http.get(f"/sessions/{one}", headers=B)).status_code == 404
    assert (
        await shim.http.post(f"/sessions/{one}/execute", json={"code": "1"}, headers=B)
    ).status_code == 404
    assert (await shim.http.delete(f"/sessions/{one}", headers=B)).status_code == 404
    listed_b = (await shim.http.get("/sessions", headers=B)).json()
    assert listed_b["count"] == 0
    listed_a = {s["session_id"] for s in (await shim.http.get("/sessions", headers=A)).json()["items"]}
    assert {one, two} <= listed_a


async def test_delete_ends_the_session_and_removes_its_sandbox(shim: Shim) -> None:
    sid = await shim.new()
    await shim.run(sid, "x = 1")
    assert shim.container_exists(sid)
    assert (await shim.http.delete(f"/sessions/{sid}", headers=A)).status_code == 204
    assert not shim.container_exists(sid)
    gone = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "x"}, headers=A)
    assert gone.status_code == 410 and "deleted" in gone.json()["detail"]
    info = (await shim.http.get(f"/sessions/{sid}", headers=A)).json()
    assert info["status"] == "ended" and info["end_reason"] == "deleted"


async def test_timeout_interrupts_and_the_session_keeps_its_state(shim: Shim) -> None:
    sid = await shim.new()
    await shim.run(sid, "counter = 7")
    started = time.monotonic()
    slow = await shim.run(sid, "import time\nwhile True:\n    time.sleep(0.05)", timeout=1)
    assert slow["status"] == "timeout" and slow["error"]["type"] == "execution_timeout"
    assert time.monotonic() - started < 10
    assert (await shim.run(sid, "counter + 1"))["result"] == "8"


async def test_code_that_ignores_the_interrupt_is_killed(shim: Shim) -> None:
    sid = await shim.new()
    stubborn = "while True:\n    try:\n        while True:\n            pass\n"
    stubborn += "    except KeyboardInterrupt:\n        pass"
    reply = await shim.run(sid, stubborn, timeout=1)
    assert reply["status"] == "timeout" and reply["error"]["type"] == "killed_after_timeout"
    info = (await shim.http.get(f"/sessions/{sid}", headers=A)).json()
    assert info["status"] == "ended" and info["end_reason"] == "killed_after_timeout"
    assert not shim.container_exists(sid)


async def test_out_of_memory_ends_the_session(shim: Shim) -> None:
    sid = await shim.new(memory_limit="128m")
    reply = await shim.run(
        sid, "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))", timeout=60
    )
    assert reply["status"] == "failed" and reply["error"]["type"] == "oom_killed", reply
    gone = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "1"}, headers=A)
    assert gone.status_code == 410 and "oom_killed" in gone.json()["detail"]


async def test_session_code_has_no_network(shim: Shim) -> None:
    sid = await shim.new()
    probe = (
        "import socket\n"
        "def attempt(host):\n"
        "    try:\n"
        "        socket.create_connection((host, 80), timeout=3).close()\n"
        "        return 'open'\n"
        "    except OSError as exc:\n"
        "        return type(exc).__name__\n"
        "[attempt('1.1.1.1'), attempt('pypi.org'), sorted(n for _, n in socket.if_nameindex())]"
    )
    reply = await shim.run(sid, probe, timeout=20)
    assert reply["status"] == "succeeded", reply
    assert "'open'" not in reply["result"] and "'eth" not in reply["result"], reply["result"]


async def test_per_tenant_cap_is_429_naming_the_limit(tmp_path: Path) -> None:
    async with Shim(settings_for(tmp_path, session_max_per_tenant=2)) as shim:
        if shim.backend.sessions is None:
            pytest.skip("runsc cannot start a sandbox here")
        await shim.new()
        second = await shim.new()
        over = await shim.http.post("/sessions", json={}, headers=A)
        assert over.status_code == 429 and "session_max_per_tenant=2" in over.json()["detail"]
        assert over.headers["Retry-After"]
        assert (await shim.http.post("/sessions", json={}, headers=B)).status_code == 201  # per tenant
        await shim.http.delete(f"/sessions/{second}", headers=A)
        assert (await shim.http.post("/sessions", json={}, headers=A)).status_code == 201


async def test_ttl_and_idle_timeout_end_sessions_within_seconds(shim: Shim) -> None:
    ttl = await shim.new(ttl_seconds=2)
    idle = await shim.new(idle_timeout_seconds=2)

    async def ended(sid: str) -> bool:
        return (await shim.http.get(f"/sessions/{sid}", headers=A)).json()["status"] == "ended"

    await wait_until(lambda: ended(ttl), 8)
    await wait_until(lambda: ended(idle), 8)
    assert (await shim.http.get(f"/sessions/{ttl}", headers=A)).json()["end_reason"] == "expired"
    assert (await shim.http.get(f"/sessions/{idle}", headers=A)).json()["end_reason"] == "idle"
    assert not shim.container_exists(ttl) and not shim.container_exists(idle)
    gone = await shim.http.post(f"/sessions/{idle}/execute", json={"code": "1"}, headers=A)
    assert gone.status_code == 410 and "idle" in gone.json()["detail"]


async def test_idle_session_pauses_to_disk_and_resumes_with_state(tmp_path: Path) -> None:
    async with Shim(settings_for(tmp_path, session_pause_after_seconds=1)) as shim:
        if shim.backend.sessions is None:
            pytest.skip("runsc cannot start a sandbox here")
        sid = await shim.new()
        await shim.run(sid, "data = list(range(5))\nopen('f.txt', 'w').write('disk')")

        async def paused() -> bool:
            return (await shim.http.get(f"/sessions/{sid}", headers=A)).json()["status"] == "paused"

        await wait_until(paused, 10)
        assert not shim.container_exists(sid)  # no sandbox (no memory) while paused
        image = Path(shim.backend.sessions.root) / sid / "image"
        assert any(image.iterdir())
        resumed = await shim.run(sid, "sum(data), open('f.txt').read()")
        assert resumed["status"] == "succeeded" and resumed["result"] == "(10, 'disk')"


async def test_sessions_survive_a_server_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with Shim(settings) as shim:
        if shim.backend.sessions is None:
            pytest.skip("runsc cannot start a sandbox here")
        sid = await shim.new()
        await shim.run(sid, "import json\nstate = {'n': 3}")
    # the first server is gone (graceful close pauses the session to disk); a new one takes over
    async with Shim(settings) as again:
        info = (await again.http.get(f"/sessions/{sid}", headers=A)).json()
        assert info["status"] == "paused" and info["executions"] == 1
        reply = await again.run(sid, "json.dumps(state)")
        assert reply["result"] == "'{\"n\": 3}'"


async def test_idempotent_execute_and_create(shim: Shim) -> None:
    key = {"Idempotency-Key": "call-key-0001", **A}
    sid = await shim.new()
    await shim.run(sid, "n = 0")
    first = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "n += 1\nn"}, headers=key)
    again = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "n += 1\nn"}, headers=key)
    assert first.json() == again.json() and first.json()["result"] == "1"  # ran once
    clash = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "n"}, headers=key)
    assert clash.status_code == 409
    made = await shim.http.post("/sessions", json={"idempotency_key": "create-key-1"}, headers=A)
    replay = await shim.http.post("/sessions", json={"idempotency_key": "create-key-1"}, headers=A)
    assert made.status_code == 201 and replay.status_code == 200
    assert made.json()["session_id"] == replay.json()["session_id"]


async def test_sdk_session_sync_and_async(shim: Shim) -> None:
    import tako_vm

    url = str(shim.server.make_url(""))

    def blocking() -> tuple[Any, Any, str]:
        with tako_vm.Client(url, api_key=A["X-API-Key"]) as client, tako_vm.Session(client) as session:
            session.run("import statistics\nvalues = [1, 2, 3, 4]")
            mean = session.run("statistics.mean(values)")
            broken = session.run("undefined_name")
            sid = session.session_id
        return mean, broken, sid

    mean, broken, sid = await asyncio.to_thread(blocking)
    assert mean.status == "succeeded" and mean.result == "2.5"
    assert broken.status == "failed" and broken.error is not None and broken.error.type == "NameError"
    info = (await shim.http.get(f"/sessions/{sid}", headers=A)).json()
    assert info["end_reason"] == "deleted"  # the context manager deleted it on exit

    async with tako_vm.AsyncClient(url, api_key=A["X-API-Key"]) as client:
        async with tako_vm.AsyncSession(client, ttl_seconds=120) as session:
            await session.run("total = 40")
            record = await session.run("total + 2", timeout=10)
            assert record.result == "42" and record.session_id == session.session_id
            listed = await client.list_sessions()
            assert session.session_id in {s.session_id for s in listed}
        with pytest.raises(tako_vm.SessionEndedError, match="deleted"):
            await client.run_in_session(session.session_id, "total")


async def test_cli_session_commands_and_repl(shim: Shim) -> None:
    import io

    from tako_vm.cli import main
    from tako_vm.cli.session import repl_loop

    url = str(shim.server.make_url(""))
    auth = ["--url", url, "--api-key", A["X-API-Key"]]

    def cli(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    code, out, _ = await asyncio.to_thread(cli, "session", "new", *auth, "--ttl", "300")
    sid = out.strip()
    assert code == 0 and sid.startswith("sess-")
    assert (await asyncio.to_thread(cli, "session", "run", sid, "-c", "x = 21", *auth))[0] == 0
    code, out, _ = await asyncio.to_thread(
        cli, "session", "run", sid, "-c", "print('doubling')\nx * 2", *auth
    )
    assert code == 0 and out == "doubling\n42\n"
    code, _, err = await asyncio.to_thread(cli, "session", "run", sid, "-c", "x.nope", *auth)
    assert code == 1 and "AttributeError" in err
    code, out, _ = await asyncio.to_thread(cli, "session", "list", *auth)
    assert code == 0 and sid in out
    assert (await asyncio.to_thread(cli, "session", "rm", sid, *auth))[0] == 0
    code, _, err = await asyncio.to_thread(cli, "session", "run", sid, "-c", "x", *auth)
    assert code == 3 and "deleted" in err

    lines = iter(["def square(v):", "    return v * v", "", "square(12)", "exit()"])

    def read(prompt: str) -> str:
        return next(lines)

    def run_repl() -> tuple[int, str]:
        import tako_vm

        out, err = io.StringIO(), io.StringIO()
        with tako_vm.Client(url, api_key=A["X-API-Key"]) as client, tako_vm.Session(client) as session:
            code = repl_loop(session.run, read, out, err)
        return code, out.getvalue()

    code, printed = await asyncio.to_thread(run_repl)
    assert code == 0 and printed == "144\n"


async def test_examples_keep_state_across_tool_calls(shim: Shim) -> None:
    import importlib
    import sys

    import tako_vm

    sys.path.insert(0, str(REPO / "examples"))
    try:
        openai_loop = importlib.import_module("openai_session_loop")
        langchain_loop = importlib.import_module("langchain_session_tool")
    finally:
        sys.path.remove(str(REPO / "examples"))
    url = str(shim.server.make_url(""))

    def converse() -> tuple[list[Any], list[Any]]:
        with tako_vm.Client(url, api_key=A["X-API-Key"]) as client:
            first = openai_loop.conversation(openai_loop.FakeModel(), "median?", client)
            second = langchain_loop.conversation(langchain_loop.fake_model(), "total?", client)
        return first, second

    openai_messages, langchain_messages = await asyncio.to_thread(converse)
    tool_replies = [m["content"] for m in openai_messages if isinstance(m, dict) and m.get("role") == "tool"]
    assert tool_replies == ["", "Out: 4"]  # the second call used `data` from the first
    assert [m.content for m in langchain_messages if type(m).__name__ == "ToolMessage"] == ["", "Out: 8"]
    listed = (await shim.http.get("/sessions", headers=A)).json()["items"]
    assert len(listed) == 2 and {s["end_reason"] for s in listed} == {"deleted"}  # one per conversation


async def test_a_live_session_after_a_crash_ends_server_restarted_and_its_sandbox_is_removed(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    async with Shim(settings) as shim:
        if shim.backend.sessions is None:
            pytest.skip("runsc cannot start a sandbox here")
        sid = await shim.new()
        await shim.run(sid, "x = 1")
        orphan = shim.backend.sessions.live.pop(sid)  # as after a crash: nobody pauses it, its Sentry runs on
    assert shim.container_exists(sid)
    async with Shim(settings) as again:
        info = (await again.http.get(f"/sessions/{sid}", headers=A)).json()
        assert info["status"] == "ended" and info["end_reason"] == "server_restarted"
        assert not again.container_exists(sid)
        gone = await again.http.post(f"/sessions/{sid}/execute", json={"code": "x"}, headers=A)
        assert gone.status_code == 410 and "server_restarted" in gone.json()["detail"]
    with contextlib.suppress(ProcessLookupError):
        orphan.proc.kill()
    orphan.drain.cancel()
