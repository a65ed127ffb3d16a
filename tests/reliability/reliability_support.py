"""Helpers shared by the fault-injection tests (a module, not a conftest, so tests can import it)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
RUNSC_PATH = f"{ROOT / '.tools' / 'bin'}:/usr/local/bin:/usr/bin:/bin"


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def wait_result(http: httpx.Client, job_id: str, timeout: int = 90) -> dict[str, Any]:
    response = http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": timeout})
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def sandbox_processes(marker: str) -> dict[int, str]:
    """Live processes whose command line mentions ``marker`` (e.g. a server's data directory), by pid."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    found: dict[int, str] = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if marker in args and not args.startswith("ps "):
            found[int(pid)] = args
    return found


# -- API-server faults for the operator tests (kmock) ------------------------------------------------


def inject(kube: Any, criteria: Any, faults: list[tuple[int, dict[str, Any]]]) -> list[Any]:
    """Answer the first ``len(faults)`` requests matching ``criteria`` with the faults (status, body),
    then step aside so that the emulator serves as usual. Returns the requests that got a fault.

    Stepping aside returns ``NotImplemented``, never ``None``: kmock 0.8 copies the status of a
    returned ``kmock.Response`` onto the reaction itself (``object.__setattr__`` on its frozen
    Response), so a reaction that later returns None still answers with that status and an empty
    body. That kmock bug made every later watch request fail with a bodiless 410 or 500."""
    import kmock  # the operator tests' dependency, not the local-mode tests'

    served: list[Any] = []

    def react(request: Any) -> Any:
        if len(served) >= len(faults):
            return NotImplemented  # kmock: "not this reaction", try the next one (the emulator)
        status, body = faults[len(served)]
        served.append(request)
        return kmock.Response(status=status, payload=body)

    async def register() -> None:
        kube._emulator[criteria].override << react  # kmock's DSL on the harness's emulator

    kube._run(register())
    return served


def api_status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes ``Status`` error body, as the API server sends it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


@dataclass
class FaultRule:
    method: str
    path: re.Pattern[str]
    body: re.Pattern[bytes]
    faults: list[tuple[int, dict[str, Any]]]
    served: list[str] = field(default_factory=list)

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return method == self.method and bool(self.path.search(path)) and bool(self.body.search(body))


class FaultProxy:
    """A real HTTP reverse proxy in front of the API emulator, for faults kmock cannot inject cleanly.

    - ``fail(method, path_regex, faults)``: answer the next matching requests with the faults (status,
      Status body) WITHOUT forwarding them, so the write is not persisted (a kmock reaction would be
      too late: kmock applies every create/patch before any reaction answers).
    - ``cut_watches(path_part)``: abort the TCP connection of every watch stream in flight whose path
      contains ``path_part``, after its headers and any events went out: the client sees the stream end
      without the final chunk (a real mid-stream drop, not an orderly end).

    Runs in its own thread and event loop; ``url`` is what the operator's kubeconfig points at.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self.rules: list[FaultRule] = []
        self.watches: dict[int, tuple[str, Any]] = {}  # id -> (path, transport) of live watch streams
        self.streamed: dict[int, int] = {}  # id -> bytes of events sent so far on that watch stream
        self.watch_requests: list[str] = []
        self.cut: list[tuple[str, int]] = []  # (path, bytes of events it had carried) per cut stream
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._runner: Any = None
        self._session: Any = None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self.url = self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _start(self) -> str:
        from aiohttp import ClientSession, ClientTimeout, web

        self._session = ClientSession(timeout=ClientTimeout(total=None), auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        for _path, transport in list(self.watches.values()):
            transport.abort()
        await self._session.close()
        await self._runner.cleanup()

    def fail(
        self, method: str, path_regex: str, faults: list[tuple[int, dict[str, Any]]], body_regex: str = ""
    ) -> list[str]:
        """Fault the next ``len(faults)`` requests whose path (and body, if given) match; returns the
        paths that got a fault."""
        rule = FaultRule(
            method.upper(), re.compile(path_regex), re.compile(body_regex.encode()), list(faults)
        )
        self.rules.append(rule)
        return rule.served

    def cut_watches(self, path_part: str) -> int:
        async def cut() -> int:
            victims = [(key, p, t) for key, (p, t) in self.watches.items() if path_part in p]
            for key, path, transport in victims:
                transport.abort()
                self.watches.pop(key, None)
                self.cut.append((path, self.streamed.get(key, 0)))
            return len(victims)

        count: int = self._call(cut())
        return count

    async def _serve(self, request: Any) -> Any:
        from aiohttp import web

        path = request.path_qs
        body = await request.read()
        for rule in self.rules:
            if rule.faults and rule.matches(request.method, request.path, body):
                status, payload = rule.faults.pop(0)
                rule.served.append(path)
                return web.json_response(payload, status=status)
        skip = ("host", "content-length", "accept-encoding")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with self._session.request(
            request.method, self.upstream + path, data=body or None, headers=headers
        ) as upstream:
            drop = {"content-length", "transfer-encoding", "content-encoding", "connection"}
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in drop},
            )
            await response.prepare(request)
            watching = request.query.get("watch") == "true"
            key = id(response)
            if watching:
                self.watch_requests.append(path)
                self.watches[key] = (path, request.transport)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    if watching:
                        self.streamed[key] = self.streamed.get(key, 0) + len(chunk)
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the connection was cut (by cut_watches or by the client)
            finally:
                self.watches.pop(key, None)
            return response


def proxied_kubeconfig(kube: Any, proxy: FaultProxy, directory: Path) -> str:
    """A kubeconfig like the harness's, pointing at the proxy instead of the emulator."""
    direct = Path(kube.kubeconfig(directory)).read_text()
    path = directory / "kubeconfig-via-proxy"
    path.write_text(direct.replace(kube.url, proxy.url))
    return str(path)
