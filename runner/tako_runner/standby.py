"""Tako VM standby runner: a pre-started job Pod waits for exactly ONE job pushed by the operator.

Stdlib only, shipped next to ``runner.py`` (same directory) in the standby Pod::

    python3 -I /runner/standby.py [--host H] [--port P] [--code-dir D] [--input-dir D]
                                  [--output-dir D] [--work-dir D]

(it then re-executes itself once with ``--token-fd N`` so that its environment no longer holds the
token, see ``reexec_without_token``)

It listens on ``--host:--port`` (default ``0.0.0.0:8790``) for one ``POST /job`` carrying
``Authorization: Bearer <token>``, where the token is the per-Pod secret the operator put in the Pod's
``TAKO_STANDBY_TOKEN`` environment variable. The body is JSON ``{"job_uid", "code", "input_data",
"config"}``. On the first authenticated, well-formed push it writes ``main.py`` + ``job.json`` into the
code directory and ``data.json`` into the input directory (files 0444, directories 0555), answers
``200``, closes the listener (a second push finds nothing listening) and then runs the job in this
process exactly like ``runner.py run`` does: same envelope on stdout, same limits.

The pushed config cannot choose where things are written or read: the code, input, output and work
directories are this process's own command-line values, never the pusher's. Wrong tokens get ``401``;
after ``MAX_BAD_PUSHES`` of them the runner exits with code 3 and the operator replaces the Pod.
Health checks that connect and send nothing are ignored. Nothing but the final envelope goes to stdout.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import importlib.util
import json
import os
import sys
from typing import Any

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8790
TOKEN_ENV = "TAKO_STANDBY_TOKEN"
PUSH_PATH = "/job"
MAX_PUSH_BYTES = 4 * 1024 * 1024  # code (<= 1 MiB in a ConfigMap) + input (<= 1 MiB) + config, with room
MAX_BAD_PUSHES = 10
CONNECTION_TIMEOUT_SECONDS = 10.0
EXIT_TOO_MANY_BAD_PUSHES = 3
# Config keys that name paths: always this process's own directories, never the pusher's values.
PATH_KEYS = ("code_path", "input_path", "output_dir", "work_dir", "deps_dir", "python")

USAGE = (
    "usage: standby.py [--host H] [--port P] [--code-dir D] [--input-dir D] [--output-dir D] [--work-dir D]"
)


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``--name value`` options (argparse costs start-up time inside gVisor; this runs before the job)."""
    options: dict[str, Any] = {
        "host": DEFAULT_HOST,
        "port": DEFAULT_PORT,
        "code_dir": "/code",
        "input_dir": "/input",
        "output_dir": "/output",
        "work_dir": "/tmp",
        "token_fd": -1,
    }
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        key = arg[2:].replace("-", "_") if arg.startswith("--") else ""
        if key not in options or not rest:
            raise SystemExit(f"{USAGE}\nstandby.py: unexpected argument {arg!r}")
        value = rest.pop(0)
        options[key] = int(value) if key in ("port", "token_fd") else value
    return options


def check_push(body: Any) -> str | None:
    """None when ``body`` is a well-formed push, else the reason it is not (names the field)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    unknown = sorted(set(body) - {"job_uid", "code", "input_data", "config"})
    if unknown:
        return f"unknown fields: {', '.join(unknown)}"
    if not isinstance(body.get("job_uid"), str) or not body["job_uid"]:
        return "job_uid must be a non-empty string"
    if not isinstance(body.get("code"), str) or not body["code"].strip():
        return "code must be a non-empty string"
    if not isinstance(body.get("input_data", {}), dict):
        return "input_data must be a JSON object"
    if not isinstance(body.get("config"), dict):
        return "config must be a JSON object"
    return None


def _write_readonly(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o444)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def hand_over(push: dict[str, Any], options: dict[str, Any]) -> str:
    """Write the pushed job where the runner reads it; return the path of its job.json."""
    config = {key: value for key, value in push["config"].items() if key not in PATH_KEYS}
    config.update(
        code_path=os.path.join(options["code_dir"], "main.py"),
        input_path=os.path.join(options["input_dir"], "data.json"),
        output_dir=options["output_dir"],
        work_dir=options["work_dir"],
    )
    config_path = os.path.join(options["code_dir"], "job.json")
    _write_readonly(config["code_path"], push["code"])
    _write_readonly(config_path, json.dumps(config, sort_keys=True))
    _write_readonly(config["input_path"], json.dumps(push.get("input_data") or {}, ensure_ascii=False))
    for directory in (options["code_dir"], options["input_dir"]):
        # A directory we own (tests) is made read-only too; a mount point the kubelet created
        # (an emptyDir, root-owned) cannot be: the files themselves are 0444 either way.
        with contextlib.suppress(PermissionError):
            os.chmod(directory, 0o555)
    return config_path


class _PushHandler(http.server.BaseHTTPRequestHandler):
    """One request; the outcome is left on the server object for `wait_for_push`."""

    server: _StandbyServer
    timeout = CONNECTION_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("standby: " + (format % args) + "\n")

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(405, {"detail": f"use POST {PUSH_PATH}"})

    def do_POST(self) -> None:
        server = self.server
        if self.path != PUSH_PATH:
            self._answer(404, {"detail": f"unknown path; the push goes to {PUSH_PATH}"})
            return
        given = self.headers.get("Authorization", "")
        given = given[len("Bearer ") :].strip() if given.startswith("Bearer ") else ""
        if not server.token or not hmac.compare_digest(given.encode(), server.token.encode()):
            server.bad_pushes += 1
            self._answer(401, {"detail": "missing or wrong standby token"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, {"detail": "Content-Length is required"})
            return
        if not 0 < length <= MAX_PUSH_BYTES:
            self._answer(413, {"detail": f"the push must be 1..{MAX_PUSH_BYTES} bytes, got {length}"})
            return
        try:
            body = json.loads(self.rfile.read(length).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            self._answer(400, {"detail": f"the body is not JSON: {exc}"})
            return
        problem = check_push(body)
        if problem:
            self._answer(400, {"detail": problem})
            return
        try:
            server.config_path = hand_over(body, server.options)
        except (OSError, ValueError, TypeError) as exc:
            self._answer(500, {"detail": f"could not write the job: {exc}"})
            return
        server.job_uid = body["job_uid"]
        self._answer(200, {"accepted": True, "job_uid": body["job_uid"]})


class _StandbyServer(http.server.HTTPServer):
    def __init__(self, options: dict[str, Any], token: str) -> None:
        self.options = options
        self.token = token
        self.bad_pushes = 0
        self.config_path: str | None = None
        self.job_uid: str | None = None
        super().__init__((options["host"], int(options["port"])), _PushHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        sys.stderr.write(f"standby: connection from {client_address} failed: {sys.exc_info()[1]!r}\n")


def wait_for_push(server: _StandbyServer) -> str | None:
    """Serve one request at a time until a push is accepted (its job.json path) or too many bad ones."""
    try:
        while server.config_path is None and server.bad_pushes < MAX_BAD_PUSHES:
            server.handle_request()
    finally:
        server.server_close()  # one job per Pod: nothing listens any more
    return server.config_path


def load_runner() -> Any:
    """``runner.py`` from this file's directory (in the Pod both live in /runner; ``-I`` keeps the
    script directory off sys.path, so it is loaded by path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
    spec = importlib.util.spec_from_file_location("tako_standby_runner", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the runner from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reexec_without_token(argv: list[str]) -> None:
    """Start this runner again with the token on an inherited pipe instead of in the environment.

    A process's initial environment stays readable in /proc/<pid>/environ, and gVisor shows it to
    processes of the same uid even when the process is non-dumpable (tests/security/
    test_standby_gvisor.py). After the exec the environment no longer holds the token; this costs one
    interpreter start while the Pod waits, not while a job runs."""
    token = os.environ.pop(TOKEN_ENV, "")
    read_fd, write_fd = os.pipe()
    os.write(write_fd, token.encode())  # far below a pipe's buffer: never blocks
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    executable = sys.executable or "python3"
    script = os.path.abspath(__file__)
    os.execve(executable, [executable, "-I", script, *argv, "--token-fd", str(read_fd)], dict(os.environ))


def read_token(fd: int) -> str:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    options = parse_args(args)
    if options["token_fd"] < 0:
        if len(os.environ.get(TOKEN_ENV, "")) < 16:
            sys.stderr.write(f"standby: {TOKEN_ENV} must hold a token of at least 16 characters\n")
            return 2
        reexec_without_token(args)  # does not return
    token = read_token(options["token_fd"])
    if len(token) < 16:
        sys.stderr.write("standby: the token pipe held no token of at least 16 characters\n")
        return 2
    runner = load_runner()  # before listening: the push should find everything ready
    runner.protect_self()
    server = _StandbyServer(options, token)
    sys.stderr.write(f"standby: listening on {options['host']}:{server.server_address[1]}\n")
    config_path = wait_for_push(server)
    if config_path is None:
        sys.stderr.write(f"standby: {MAX_BAD_PUSHES} pushes with a wrong token; giving up\n")
        return EXIT_TOO_MANY_BAD_PUSHES
    sys.stderr.write(f"standby: job {server.job_uid} accepted; running it\n")
    result: int = runner.main(["run", "--config", config_path])
    return result


if __name__ == "__main__":
    sys.exit(main())
