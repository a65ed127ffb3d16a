"""Tako VM session server: the in-Pod end of a ``PythonSession`` on Kubernetes (stdlib only).

Shipped next to ``session.py`` (same directory) in the session Pod::

    python3 -I /runner/session_server.py [--host H] [--port P] [--max-output N] [--config /code/job.json]

The channel is the standby Pods' (one ingress-only port, a bearer token checked with
``hmac.compare_digest``), kept open for the Pod's life instead of closed after one push.

It keeps ONE Python namespace for the Pod's life (``session.run_cell``: notebook semantics, a timeout
is a ``KeyboardInterrupt`` in the cell and the state is kept) and takes code over HTTP:

- ``POST /execute`` with ``Authorization: Bearer <token>`` (the per-session token; this process knows
  only its sha256, from ``TAKO_SESSION_TOKEN_SHA256``: the Pod spec, its environment and anything the
  session's own code can read hold no secret) and the JSON body
  ``{"code", "timeout", "key"?}`` -> ``200 {"number", "status", "stdout", "stderr", "result",
  "error", "duration_ms", ...}``. ``number`` counts the cells run so far (the session's execution
  count). With ``key`` (an Idempotency-Key) a repeat with the same payload gets the first reply,
  not a second run; another payload under the same key gets ``409``.
  With ``execution`` (the shim's execution id for the call) the call's output is kept as it is
  written, for:
- ``GET /events?execution=<id>&after=<n>&wait=<s>`` (same token) -> ``200 {"status": "queued" |
  "running" | "done", "chunks": [[stream, text], ...] (from the n-th on), "reply"? (once done)}``:
  the live output of the current (or last) call, waiting up to ``wait`` seconds (at most
  ``MAX_WAIT_SECONDS``) for something new; ``404`` for any other execution. Only the current or last
  call is kept (its kept output: at most ``--max-output`` characters a stream), so memory is bounded.
- anything else: 404/405; a wrong or missing token ``401``; after ``MAX_BAD_TOKENS`` of them the
  server exits with code 3 (fail closed; the operator records the session as crashed).

With ``--config`` (a session with requirements: the Pod's install init container ran ``runner.py install``
into ``deps_dir`` with install egress), the server first waits until egress is closed (the runner's own
probe, ``runner.wait_for_closed_egress``, bounded by ``egress_probe_timeout``) and exits with code 4
without listening if it is still open; then ``deps_dir`` goes first on ``sys.path`` (``-I`` ignores
PYTHONPATH) and it listens. No cell ever runs while the Pod has egress.

Requests are read by a thread each; calls are handed to the main thread (the cell's timeout is a
SIGALRM there) through a FIFO queue and run one at a time, in arrival order: calls from any shim
replica are serialised here, in the Pod, while ``/events`` is answered during a call. Nothing listens but this
port, and the Pod's NetworkPolicy admits only the shim's Pods to it and allows no egress at all.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import http.server
import importlib.util
import json
import os
import queue
import signal
import socketserver
import sys
import threading
import urllib.parse
from typing import Any

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8791
TOKEN_HASH_ENV = "TAKO_SESSION_TOKEN_SHA256"
EXECUTE_PATH = "/execute"
EVENTS_PATH = "/events"
MAX_WAIT_SECONDS = 10.0
MAX_BODY_BYTES = 2 * 1024 * 1024  # code is at most 100,000 characters (CODE_MAX_CHARS), with room
MAX_TIMEOUT_SECONDS = 86_400
MAX_BAD_TOKENS = 100
IDEMPOTENT_REPLIES = 64
EXIT_TOO_MANY_BAD_TOKENS = 3
EXIT_EGRESS_OPEN = 4
USAGE = "usage: session_server.py [--host H] [--port P] [--max-output N] [--config PATH]"


def _log(line: str) -> None:
    """To the real stderr (a cell replaces sys.stderr while it runs)."""
    if sys.__stderr__ is not None:
        sys.__stderr__.write(line + "\n")
        sys.__stderr__.flush()


def _load(name: str) -> Any:
    """A sibling module by path (``-I`` keeps the script's directory off sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"tako_session_{name}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "host": DEFAULT_HOST,
        "port": DEFAULT_PORT,
        "max_output": 65536,
        "config": "",
    }
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        key = arg[2:].replace("-", "_") if arg.startswith("--") else ""
        if key not in options or not rest:
            raise SystemExit(f"{USAGE}\nsession_server.py: unexpected argument {arg!r}")
        value = rest.pop(0)
        options[key] = value if key in ("host", "config") else int(value)
    return options


def check_request(body: Any) -> str | None:
    """None when ``body`` is a well-formed execute request, else the reason (names the field)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    unknown = sorted(set(body) - {"code", "timeout", "key", "execution"})
    if unknown:
        return f"unknown fields: {', '.join(unknown)}"
    if not isinstance(body.get("code"), str) or not body["code"].strip():
        return "code must be a non-empty string"
    timeout = body.get("timeout")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        return f"timeout must be a number of seconds in (0, {MAX_TIMEOUT_SECONDS}]"
    key = body.get("key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
        return "key must be a string of 1..128 characters"
    execution = body.get("execution")
    if execution is not None and (not isinstance(execution, str) or not 1 <= len(execution) <= 64):
        return "execution must be a string of 1..64 characters"
    return None


class LiveCall:
    """The output of the current (or last) call as it is written, for ``GET /events`` (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.execution: str | None = None
        self.queued: set[str] = set()
        self.chunks: list[list[str]] = []
        self.reply: dict[str, Any] | None = None

    def enqueue(self, execution: str | None) -> None:
        if execution:
            with self.lock:
                self.queued.add(execution)

    def start(self, execution: str | None) -> None:
        with self.lock:
            if execution:
                self.queued.discard(execution)
            self.execution, self.chunks, self.reply = execution, [], None
            self.lock.notify_all()

    def write(self, stream: str, text: str) -> None:
        with self.lock:
            self.chunks.append([stream, text])
            self.lock.notify_all()

    def finish(self, reply: dict[str, Any]) -> None:
        with self.lock:
            self.reply = reply
            self.lock.notify_all()

    def events(self, execution: str, after: int, wait: float) -> dict[str, Any] | None:
        """What lies beyond chunk ``after`` of ``execution`` (None: not the current, last or a queued
        call), waiting up to ``wait`` seconds for something new."""

        def news() -> bool:
            if execution in self.queued:
                return False
            if execution != self.execution:
                return True  # not (or no longer) this call: say so at once
            return len(self.chunks) > after or self.reply is not None

        with self.lock:
            self.lock.wait_for(news, timeout=wait)
            if execution in self.queued:
                return {"status": "queued", "chunks": []}
            if execution != self.execution:
                return None
            answer: dict[str, Any] = {"status": "running", "chunks": self.chunks[after:]}
            if self.reply is not None:
                answer.update(status="done", reply=self.reply)
            return answer


def fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([body["code"], body["timeout"]]).encode()).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SessionServer
    protocol_version = "HTTP/1.0"
    timeout = 30.0  # reading a request; the cell itself has its own timeout

    def log_message(self, format: str, *args: Any) -> None:
        _log("session: " + (format % args))

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        given = given[len("Bearer ") :].strip() if given.startswith("Bearer ") else ""
        digest = hashlib.sha256(given.encode()).hexdigest()
        if not given or not hmac.compare_digest(digest, self.server.token_sha256):
            self.server.bad_tokens += 1
            self._answer(401, {"detail": "missing or wrong session token"})
            return False
        return True

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != EVENTS_PATH:
            self._answer(405, {"detail": f"use POST {EXECUTE_PATH} or GET {EVENTS_PATH}"})
            return
        if not self._authorized():
            return
        query = urllib.parse.parse_qs(url.query)
        try:
            execution = query["execution"][0]
            after = int(query.get("after", ["0"])[0])
            wait = min(max(float(query.get("wait", ["0"])[0]), 0.0), MAX_WAIT_SECONDS)
        except (KeyError, ValueError):
            self._answer(400, {"detail": "events needs execution=<id>, after=<n> >= 0, wait=<seconds>"})
            return
        if after < 0:
            self._answer(400, {"detail": "after must be >= 0"})
            return
        found = self.server.live.events(execution, after, wait)
        if found is None:
            self._answer(404, {"detail": "not the current or last execution"})
        else:
            self._answer(200, found)

    def do_POST(self) -> None:
        server = self.server
        if self.path != EXECUTE_PATH:
            self._answer(404, {"detail": f"unknown path; code goes to {EXECUTE_PATH}"})
            return
        if not self._authorized():
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, {"detail": "Content-Length is required"})
            return
        if not 0 < length <= MAX_BODY_BYTES:
            self._answer(413, {"detail": f"the body must be 1..{MAX_BODY_BYTES} bytes, got {length}"})
            return
        try:
            body = json.loads(self.rfile.read(length).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            self._answer(400, {"detail": f"the body is not JSON: {exc}"})
            return
        problem = check_request(body)
        if problem:
            self._answer(400, {"detail": problem})
            return
        self._answer(*server.submit(body))


class SessionServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One namespace, one cell at a time (in the main thread, from ``calls``); requests are read by
    threads of their own, so ``/events`` is answered while a cell runs."""

    daemon_threads = True

    def __init__(self, options: dict[str, Any], token_sha256: str, session: Any) -> None:
        self.token_sha256 = token_sha256
        self.session = session
        self.max_output = int(options["max_output"])
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.number = 0
        self.bad_tokens = 0
        self.replies: collections.OrderedDict[str, tuple[str, dict[str, Any]]] = collections.OrderedDict()
        self.live = LiveCall()
        self.calls: queue.Queue[tuple[dict[str, Any], queue.Queue[tuple[int, dict[str, Any]]]]] = (
            queue.Queue()
        )
        super().__init__((options["host"], int(options["port"])), _Handler)

    def submit(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """From a request's thread: queue the call for the main thread and wait for its answer."""
        answer: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue(maxsize=1)
        self.live.enqueue(body.get("execution"))
        self.calls.put((body, answer))
        return answer.get()

    def execute(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = body.get("key")
        if key is not None and key in self.replies:
            seen, reply = self.replies[key]
            if seen != fingerprint(body):
                return 409, {"detail": "Idempotency key reused with different payload"}
            return 200, {**reply, "replayed": True}
        self.number += 1
        self.live.start(body.get("execution"))
        try:
            reply = self.session.run_cell(
                self.namespace, body["code"], self.number, float(body["timeout"]), self.max_output,
                self.live.write,
            )  # fmt: skip
        except KeyboardInterrupt:  # an interrupt between the cell and its reply: still a timeout
            error = {"type": "execution_timeout", "message": "interrupted", "traceback": ""}
            reply = {"status": "timeout", "stdout": "", "stderr": "", "result": None, "error": error}
        reply = {**reply, "number": self.number}
        self.live.finish(reply)
        if key is not None:
            self.replies[key] = (fingerprint(body), reply)
            while len(self.replies) > IDEMPOTENT_REPLIES:
                self.replies.popitem(last=False)
        return 200, reply

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log(f"session: connection from {client_address} failed: {sys.exc_info()[1]!r}")


def serve(server: SessionServer) -> int:
    """Accept in a thread; run the queued calls here, in the main thread, one at a time."""
    threading.Thread(target=server.serve_forever, name="session-accept", daemon=True).start()
    while server.bad_tokens < MAX_BAD_TOKENS:
        try:
            try:
                body, answer = server.calls.get(timeout=0.5)
            except queue.Empty:
                continue
        except KeyboardInterrupt:  # a cell's timer fired outside the cell: nothing to interrupt
            continue
        try:
            result = server.execute(body)
        except KeyboardInterrupt:  # after the cell, before its reply: still answered
            error = {"type": "execution_timeout", "message": "interrupted", "traceback": ""}
            result = 200, {"status": "timeout", "stdout": "", "stderr": "", "result": None, "error": error}
        answer.put(result)
    _log(f"session: {MAX_BAD_TOKENS} requests with a wrong token; giving up")
    return EXIT_TOO_MANY_BAD_TOKENS


def prepare_installed(config_path: str) -> str | None:
    """After an install step: None once egress is closed (and ``deps_dir`` is importable), else why not."""
    runner = _load("runner")
    config = runner.load_config(config_path)
    if config.get("egress_probe"):
        problem: str | None = runner.wait_for_closed_egress(config)
        if problem:
            return str(problem)
    deps = str(config.get("deps_dir") or "")
    if deps and os.path.isdir(deps):
        sys.path.insert(0, deps)
    return None


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    token_sha256 = os.environ.get(TOKEN_HASH_ENV, "").strip().lower()
    if len(token_sha256) != 64 or any(c not in "0123456789abcdef" for c in token_sha256):
        sys.stderr.write(f"session: {TOKEN_HASH_ENV} must hold a sha256 in hex (64 characters)\n")
        return 2
    if options["config"]:
        problem = prepare_installed(options["config"])
        if problem:
            _log(f"session: {problem}; refusing to run code")
            return EXIT_EGRESS_OPEN
    session = _load("session")
    os.chdir(os.environ.get("HOME", "/tmp"))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = SessionServer(options, token_sha256, session)
    _log(f"session: listening on {options['host']}:{server.server_address[1]}")
    return serve(server)


if __name__ == "__main__":
    sys.exit(main())
