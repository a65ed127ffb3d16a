"""The SDK's session calls: paths, bodies, typed records, and the retry discipline (an idempotency key
on create and execute, the same key on every retry). The transport is httpx's MockTransport: these
tests are about what the SDK sends when the network fails, which a real server cannot be made to do
on demand (the real end-to-end path is tests/sandbox/test_sessions.py)."""

from __future__ import annotations

import json

import httpx
import pytest

import tako_vm
from tako_vm.models.sessions import SessionInfo

INFO = {"session_id": "sess-1", "status": "ready", "created_at": "t0", "expires_at": "t1"}
RUN = {"execution_id": "e1", "session_id": "sess-1", "status": "succeeded", "result": "42", "duration_ms": 3}


def client_with(handler: httpx.MockTransport) -> tako_vm.Client:
    return tako_vm.Client("http://tako.test", transport=handler, sleep=lambda _s: None)


def test_run_retries_a_lost_answer_with_the_same_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/sessions":
            return httpx.Response(201, json=INFO)
        if len([r for r in seen if r.url.path.endswith("/execute")]) == 1:
            return httpx.Response(503, json={"detail": "try again"})
        return httpx.Response(200, json=RUN)

    with client_with(httpx.MockTransport(handle)) as client:
        session = tako_vm.Session(client, ttl_seconds=60)
        session.start()
        record = session.run("40 + 2", timeout=5)
    assert record.result == "42" and record.status == "succeeded"
    create = json.loads(seen[0].content)
    assert create["ttl_seconds"] == 60 and len(create["idempotency_key"]) >= 8
    executes = [r for r in seen if r.url.path == "/sessions/sess-1/execute"]
    assert len(executes) == 2
    assert executes[0].headers["Idempotency-Key"] == executes[1].headers["Idempotency-Key"]
    assert json.loads(executes[0].content) == {"code": "40 + 2", "timeout": 5}


def test_ended_session_raises_session_ended_and_close_tolerates_it() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/sessions":
            return httpx.Response(201, json=INFO)
        return httpx.Response(410, json={"detail": "Session sess-1 has ended (idle)"})

    with client_with(httpx.MockTransport(handle)) as client, tako_vm.Session(client) as session:
        with pytest.raises(tako_vm.SessionEndedError, match="idle") as caught:
            session.run("x")
        assert caught.value.status_code == 410
        # __exit__ deleted it: the 410 of an already ended session is not an error


def test_session_id_before_start_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="not been started"):
        _ = tako_vm.Session().session_id


async def test_a_backend_without_sessions_answers_501() -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from tako_shim.http.common import BACKEND_KEY
    from tako_shim.http.middleware import TENANT_KEY
    from tako_shim.http.sessions import NotImplementedByBackend, list_sessions

    class NoSessions:
        name = "kubernetes"

    app = web.Application()
    app[BACKEND_KEY] = NoSessions()  # type: ignore[assignment]
    request = make_mocked_request("GET", "/sessions", app=app)
    request[TENANT_KEY] = "tenant-a"
    with pytest.raises(
        NotImplementedByBackend, match="kubernetes backend does not offer sessions"
    ) as refused:
        await list_sessions(request)
    assert refused.value.status == 501


def sse(*events: tuple[str, str, dict[str, object]]) -> bytes:
    return b"".join(f"id: {i}\nevent: {e}\ndata: {json.dumps(d)}\n\n".encode() for i, e, d in events)


def test_run_with_on_output_streams_the_call_it_posts_by_its_derived_id() -> None:
    import threading

    from tako_vm.models.sessions import execution_id_for_key

    seen: list[httpx.Request] = []
    record = {**RUN, "stdout": "a\nb\n", "stderr": "E\n"}
    streamed = threading.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/sessions/sess-1/execute":
            assert streamed.wait(10)  # the call "runs" until its output has been streamed
            return httpx.Response(200, json=record)
        if len([r for r in seen if r.method == "GET"]) == 1:  # opened before the server saw the call
            return httpx.Response(404, json={"detail": "Execution not found"})
        streamed.set()
        body = sse(("2.2.0", "stdout", {"text": "a\n"}), ("2.2.2", "stderr", {"text": "E\n"}),
                   ("2.4.2", "stdout", {"text": "b\n"}), ("4.4.2", "result", record))  # fmt: skip
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    got: list[tuple[str, str]] = []
    with client_with(httpx.MockTransport(handle)) as client:
        session = tako_vm.Session(client)
        session.info = SessionInfo.model_validate(INFO)
        done = session.run(
            "print('a')", idempotency_key="key-12345678", on_output=lambda e: got.append((e.type, e.text))
        )
    assert done.stdout == "a\nb\n" and got == [("stdout", "a\n"), ("stderr", "E\n"), ("stdout", "b\n")]
    eid = execution_id_for_key("sess-1", "key-12345678")
    streams = [r for r in seen if r.url.path == f"/sessions/sess-1/executions/{eid}/events"]
    assert len(streams) >= 1 and all(r.method == "GET" for r in streams)
    posted = [r for r in seen if r.url.path.endswith("/execute")]
    assert [r.headers["Idempotency-Key"] for r in posted] == ["key-12345678"]


async def test_run_with_on_output_falls_back_to_the_record_when_there_is_no_live_stream() -> None:
    record = {**RUN, "stdout": "all\n", "stderr": "err\n"}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/execute"):
            return httpx.Response(200, json=record)
        return httpx.Response(501, json={"detail": "no live output here"})

    got: list[tuple[str, str]] = []

    async def no_sleep(_s: float) -> None:
        return None

    async with tako_vm.AsyncClient(
        "http://tako.test", transport=httpx.MockTransport(handle), sleep=no_sleep
    ) as client:
        session = tako_vm.AsyncSession(client)
        session.info = SessionInfo.model_validate(INFO)
        done = await session.run("x", on_output=lambda e: got.append((e.type, e.text)))
    assert done.result == "42" and got == [("stdout", "all\n"), ("stderr", "err\n")], "whole output, once"
