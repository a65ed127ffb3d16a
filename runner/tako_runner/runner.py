"""Tako VM in-sandbox runner: ONE self-contained, stdlib-only file.

It is shipped into Pods in a ConfigMap (and bound into local runsc sandboxes) and run by whatever
``python3`` the image has::

    python3 -I /runner/runner.py install [--config /code/job.json]   # pip-install requirements into deps_dir
    python3 -I /runner/runner.py run     [--config /code/job.json]   # run /code/main.py under a deadline

Each mode prints exactly one framed result envelope on its stdout, as its LAST output; user output is
captured through pipes and never passed through. Before printing, the runner kills every other
process in the sandbox (when it is the sandbox's init, pid 1) so nothing can print after the frame;
parsers take the last well-formed frame (see ``tako_runner.outcome`` and docs/sandbox.md).

With ``--frame-key-stdin`` (the local executor) the runner first reads a one-line secret key from its
stdin, before any user code exists, and follows its frame with ``TAKO-ENVELOPE-MAC <length> <hmac>``:
an HMAC-SHA256 of the frame that user code cannot compute, so the host may trust the frame as soon as
it arrives instead of waiting for the sandbox to exit (see docs/sandbox.md, "Authenticated frames").

Start-up cost matters (every import is file I/O through gVisor): modules are imported where they are
used, and SHA-256 comes from the built-in ``_sha256`` (``hashlib`` loads OpenSSL).

Keep this file importable on Python 3.8+ and free of third-party and project imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat as stat_mod
import sys
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time in gVisor
if TYPE_CHECKING:
    from typing import Any

SIGTERM, SIGKILL = 15, 9  # Linux numbers; the signal module would import enum machinery at start-up

ENVELOPE_VERSION = 1
HEADER = "TAKO-ENVELOPE-V1"
END_MARKER = "TAKO-ENVELOPE-END"
MAC_MARKER = "TAKO-ENVELOPE-MAC"
MAX_FRAME_KEY_BYTES = 256

DEFAULTS: dict[str, Any] = {
    "timeout": 30,
    "startup_timeout": 120,
    "requirements": [],
    "deps_dir": "/deps",
    "code_path": "/code/main.py",
    "input_path": "/input/data.json",
    "output_dir": "/output",
    "work_dir": "/tmp",
    "python": None,  # interpreter for user code and pip; default: the one running this file
    "max_stdout_bytes": 65536,
    "max_stderr_bytes": 65536,
    "max_artifact_bytes": 10 * 1024 * 1024,
    "max_total_artifact_bytes": 50 * 1024 * 1024,
    "max_artifact_count": 1000,  # files collected from /output; more is the user's error
    "max_output_depth": 64,  # nesting of result.json (pydantic and every client must handle it)
    "environment": {},
    "egress_probe": False,
    "egress_probe_timeout": 30,
    "egress_probe_targets": [["1.1.1.1", 443], ["8.8.8.8", 53]],
    "egress_probe_hostname": "pypi.org",
    "kill_grace_seconds": 2.0,
    "kill_all_processes": None,  # None: only when this runner is the sandbox's init (pid 1)
    "pip_extra_args": [],
    "live_output": False,  # forward the code's output while it runs (LiveForward: TAKO-LIVE lines)
}
LIVE_MARKER = "TAKO-LIVE"

MAX_REQUIREMENTS = 50
MAX_REQUIREMENT_LENGTH = 256
# A stdlib copy of the one requirement grammar, tako_vm.models.crd.REQUIREMENT_PATTERN (this file
# imports nothing from the project); tests/unit/test_requirement_grammar.py pins the two together.
REQUIREMENT_PATTERN = (
    r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"  # name
    r"([ \t]*\[[ \t]*[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"  # [extra
    r"([ \t]*,[ \t]*[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)*[ \t]*\])?"  # , extra]
    r"([ \t]*(===|==|!=|<=|>=|~=|<|>)[ \t]*[A-Za-z0-9][A-Za-z0-9.*+!-]*"  # op version
    r"([ \t]*,[ \t]*(===|==|!=|<=|>=|~=|<|>)[ \t]*[A-Za-z0-9][A-Za-z0-9.*+!-]*)*)?$"  # , op version
)
REQUIREMENT_RE = re.compile(REQUIREMENT_PATTERN)


def check_requirements(requirements: Any) -> list[str]:
    """Validate pip requirement strings; raise ValueError naming the first offending entry.

    Only ``name[extras] op version, op version`` is accepted: no URLs, paths, options (``-e``,
    ``--index-url``), environment markers or shell metacharacters.
    """
    if not isinstance(requirements, list):
        raise ValueError("requirements must be a list of strings")
    if len(requirements) > MAX_REQUIREMENTS:
        raise ValueError(f"too many requirements: {len(requirements)} > {MAX_REQUIREMENTS}")
    for index, entry in enumerate(requirements):
        if not isinstance(entry, str):
            raise ValueError(f"requirements[{index}] must be a string, got {type(entry).__name__}")
        if len(entry) > MAX_REQUIREMENT_LENGTH:
            raise ValueError(
                f"requirements[{index}] is longer than {MAX_REQUIREMENT_LENGTH} characters: {entry[:40]!r}..."
            )
        if not REQUIREMENT_RE.fullmatch(entry):  # fullmatch: re's `$` also matches before a final newline
            raise ValueError(
                f"requirements[{index}] {entry!r} is not a plain 'name[extras] op version' requirement "
                "(URLs, paths, options, markers and shell characters are not allowed)"
            )
    return list(requirements)


def sha256(data: bytes = b"") -> Any:
    """A SHA-256 hash object; the built-in module when there is one (importing hashlib loads OpenSSL,
    tens of ms inside gVisor)."""
    for name in ("_sha256", "_sha2"):  # the built-in module: Python <= 3.11, >= 3.12
        try:
            return __import__(name).sha256(data)
        except ImportError:
            continue
    from hashlib import sha256 as builtin

    return builtin(data)


def hmac_sha256(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 (RFC 2104) as hex; the ``hmac`` module would import hashlib and OpenSSL."""
    if len(key) > 64:
        key = sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = sha256(bytes(b ^ 0x36 for b in key) + message).digest()
    return str(sha256(bytes(b ^ 0x5C for b in key) + inner).hexdigest())


def frame(envelope: dict[str, Any]) -> str:
    """The framed text for one envelope (format documented in tako_runner.outcome)."""
    body = json.dumps(envelope, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    digest = sha256(body.encode("ascii")).hexdigest()
    return f"\n{HEADER} {len(body)} {digest}\n{body}\n{END_MARKER}\n"


def mac_line(key: bytes, framed: str) -> str:
    """The line that follows ``framed`` when the host gave a key: ``TAKO-ENVELOPE-MAC <len> <hmac>``."""
    return f"{MAC_MARKER} {len(framed)} {hmac_sha256(key, framed.encode('ascii'))}\n"


def read_frame_key(fd: int = 0) -> bytes:
    """Read the host's one-line key from ``fd`` and put /dev/null in its place.

    Called before any user code exists; user code is a fresh ``exec`` (it never shares this memory),
    this process is not dumpable, and stdin no longer holds the key, so user code cannot learn it.
    """
    data = b""
    while b"\n" not in data and len(data) <= MAX_FRAME_KEY_BYTES:
        chunk = os.read(fd, MAX_FRAME_KEY_BYTES + 1 - len(data))
        if not chunk:
            break
        data += chunk
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return data.split(b"\n", 1)[0].strip()[:MAX_FRAME_KEY_BYTES]


def now_ms() -> int:
    return int(time.monotonic() * 1000)


# --------------------------------------------------------------------------- capture


def utf8_boundary(data: bytes) -> int:
    """Length of ``data`` without a trailing, incomplete UTF-8 character (so no character is split)."""
    lead = len(data) - 1
    while lead >= 0 and len(data) - lead <= 4 and (data[lead] & 0xC0) == 0x80:
        lead -= 1
    if lead < 0 or len(data) - lead > 4:
        return len(data)
    first = data[lead]
    needed = 2 if 0xC0 <= first < 0xE0 else 3 if 0xE0 <= first < 0xF0 else 4 if 0xF0 <= first < 0xF8 else 1
    return lead if len(data) - lead < needed else len(data)


class Capture:
    """Keeps the first ``limit`` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        self.data = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        data = bytes(self.data)
        if self.truncated:
            data = data[: utf8_boundary(data)]
        text = data.decode("utf-8", errors="replace")
        if self.truncated:
            text += self.notice()
        return text

    def notice(self) -> str:
        return f"\n\n[TRUNCATED: output exceeded {self.limit} bytes]"


class LiveForward:
    """Forwards the code's captured output while it runs: ``TAKO-LIVE <stdout|stderr> <JSON string>``
    lines on this process's stdout (the host reads them from the sandbox's stdout or the Pod log).

    Exactly what the record keeps is forwarded, in the order it was read: the text of one stream's lines
    concatenates to its ``Capture.text()`` (UTF-8 decoded incrementally, a character split across reads
    waits for its end; after the cap, the same truncation notice, then nothing more)."""

    def __init__(self, fd: int = 1) -> None:
        import codecs

        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")
        self.sent: dict[str, int] = {}
        self.decoders: dict[str, Any] = {}
        self.finished: set[str] = set()

    def forward(self, name: str, capture: Capture, final: bool = False) -> None:
        if name in self.finished:
            return
        decoder = self.decoders.get(name)
        if decoder is None:
            decoder = self.decoders[name] = self._decoder(errors="replace")
        sent = self.sent.get(name, 0)
        data = bytes(capture.data)
        if capture.truncated:
            end = utf8_boundary(data)
            if end < sent:  # the bytes held back were an incomplete character that the cap cuts off
                decoder.reset()
                text = ""
            else:
                text = decoder.decode(data[sent:end], True)
            text += capture.notice()
            self.finished.add(name)
        else:
            text = decoder.decode(data[sent:], final)
            if final:
                self.finished.add(name)
        self.sent[name] = len(data)
        if text:
            self._write(f"{LIVE_MARKER} {name} {json.dumps(text, ensure_ascii=True)}\n".encode("ascii"))

    def _write(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            try:
                written = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError:
                self.fd = -1  # nobody reads our stdout any more: stop forwarding, keep capturing
                return
            view = view[written:]


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_everything_else(config: dict[str, Any]) -> None:
    """SIGKILL every other process this uid may signal, when that is safe (we are the sandbox init)."""
    wanted = config.get("kill_all_processes")
    if wanted is None:
        wanted = os.getpid() == 1
    if not wanted:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(-1, SIGKILL)
    # Reap what we can so zombies do not linger (we are init).
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)


def _exit_code(status: int) -> int:
    """``os.waitstatus_to_exitcode`` (Python 3.9+): negative signal number for a killed process."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class Child:
    """A started process whose stdout and stderr are pipes (what ``run_captured`` needs of it)."""

    def __init__(self, pid: int, stdout_fd: int, stderr_fd: int) -> None:
        self.pid = pid
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = _exit_code(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process is still running after ``timeout`` seconds."""
        give_up = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < give_up:
            time.sleep(0.005)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, SIGKILL)


def start_process(argv: list[str], *, env: dict[str, str], cwd: str) -> Child:
    """Start argv in a new session, stdin /dev/null, stdout/stderr piped, no other descriptors.

    ``os.posix_spawn`` (vfork + exec) instead of ``subprocess``: same cost per process, but importing
    subprocess costs tens of ms inside gVisor. posix_spawn cannot change directory, so this process
    moves to ``cwd`` first (the runner itself only uses absolute paths).
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        os.chdir(cwd)
        pid = os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
            setsid=True,
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return Child(pid, out_r, err_r)


def run_captured(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str,
    timeout: float,
    grace: float,
    max_stdout: int,
    max_stderr: int,
    live: LiveForward | None = None,
) -> dict[str, Any]:
    """Run argv in its own session with piped output, a deadline (TERM, then KILL after ``grace``).

    Returns exit_code (128+N for a signal), timed_out, captured stdout/stderr and elapsed_ms. With
    ``live``, output is also forwarded as it is read.
    """
    import select

    started = time.monotonic()
    proc = start_process(argv, env=env, cwd=cwd)
    out_fd, err_fd = proc.stdout_fd, proc.stderr_fd
    captures = {out_fd: Capture(max_stdout), err_fd: Capture(max_stderr)}
    poller = select.poll()
    for fd in captures:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    deadline = started + timeout
    timed_out = False
    kill_at: float | None = None
    exited_at: float | None = None
    open_fds = set(captures)
    while open_fds:
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
            # The main process is gone: anything left in its session only holds our pipes open.
            _signal_group(proc.pid, SIGKILL)
        if exited_at is None and not timed_out and now >= deadline:
            timed_out = True
            _signal_group(proc.pid, SIGTERM)
            kill_at = now + grace
        if kill_at is not None and now >= kill_at:
            _signal_group(proc.pid, SIGKILL)
            kill_at = None
        if exited_at is not None and now - exited_at > 1.0:
            break  # something outside the session still holds a pipe; stop reading
        wait = 0.05 if exited_at is not None else min(0.25, max(0.0, deadline - now) + 0.001)
        if kill_at is not None:
            wait = min(wait, max(0.0, kill_at - now) + 0.001)
        for fd, _ in poller.poll(int(wait * 1000) + 1):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if chunk:
                captures[fd].feed(chunk)
                if live is not None and live.fd >= 0:
                    live.forward("stdout" if fd == out_fd else "stderr", captures[fd])
            else:
                poller.unregister(fd)
                open_fds.discard(fd)
    os.close(out_fd)
    os.close(err_fd)
    if live is not None and live.fd >= 0:
        live.forward("stdout", captures[out_fd], final=True)
        live.forward("stderr", captures[err_fd], final=True)
    if proc.poll() is None and timed_out:
        _signal_group(proc.pid, SIGKILL)
    returncode = proc.wait(grace + 5)
    if returncode is None:
        proc.kill()
        returncode = proc.wait(60.0)
    if returncode is None:
        raise RuntimeError(f"process {proc.pid} did not end after SIGKILL")
    return {
        "exit_code": 128 - returncode if returncode < 0 else returncode,
        "timed_out": timed_out,
        "stdout": captures[out_fd],
        "stderr": captures[err_fd],
        "elapsed_ms": int((time.monotonic() - started) * 1000),
    }


# --------------------------------------------------------------------------- phases


def base_env(config: dict[str, Any]) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": config["work_dir"],
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": config["work_dir"],
        "XDG_CACHE_HOME": os.path.join(config["work_dir"], ".cache"),
        "MPLCONFIGDIR": os.path.join(config["work_dir"], ".cache", "matplotlib"),
    }
    return env


def interpreter(config: dict[str, Any]) -> str:
    return str(config.get("python") or sys.executable or "python3")


def do_install(config: dict[str, Any], t0: int) -> dict[str, Any]:
    env_out: dict[str, Any] = {"v": ENVELOPE_VERSION, "mode": "install", "error": None}
    try:
        requirements = check_requirements(config.get("requirements") or [])
    except ValueError as exc:
        env_out["error"] = {
            "type": "dependency_error",
            "message": f"invalid requirement: {exc}",
            "phase": "startup",
        }
        env_out["timing"] = {"dep_install_ms": 0, "total_ms": now_ms() - t0}
        return env_out
    if not requirements:
        env_out.update(stdout="", stderr="", exit_code=0)
        env_out["timing"] = {"dep_install_ms": 0, "total_ms": now_ms() - t0}
        return env_out
    env = base_env(config)
    env.update({"PIP_NO_CACHE_DIR": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"})
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
        if key in os.environ:
            env[key] = os.environ[key]
    argv = [
        interpreter(config), "-m", "pip", "install",
        "--target", config["deps_dir"],
        "--no-input", "--disable-pip-version-check", "--no-cache-dir",
        "--only-binary=:all:", "--no-warn-script-location", "--progress-bar", "off",
        *[str(a) for a in config.get("pip_extra_args") or []],
        "--", *requirements,
    ]  # fmt: skip
    started = now_ms()
    result = run_captured(
        argv,
        env=env,
        cwd=config["work_dir"],
        timeout=float(config["startup_timeout"]),
        grace=float(config["kill_grace_seconds"]),
        max_stdout=int(config["max_stdout_bytes"]),
        max_stderr=int(config["max_stderr_bytes"]),
    )
    env_out.update(
        exit_code=result["exit_code"],
        stdout=result["stdout"].text(),
        stderr=result["stderr"].text(),
        stdout_truncated=result["stdout"].truncated,
        stderr_truncated=result["stderr"].truncated,
    )
    if result["timed_out"]:
        env_out["error"] = {
            "type": "startup_timeout",
            "message": f"installing requirements exceeded startup_timeout={config['startup_timeout']}s",
            "phase": "startup",
        }
    elif result["exit_code"] != 0:
        lines = [ln for ln in env_out["stderr"].strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"pip exited with code {result['exit_code']}"
        env_out["error"] = {
            "type": "dependency_error",
            "message": f"pip install failed: {detail}",
            "phase": "startup",
        }
    env_out["timing"] = {"dep_install_ms": now_ms() - started, "total_ms": now_ms() - t0}
    return env_out


def _tcp_open(host: str, port: int, wait: float) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=wait):
            return True
    except OSError:
        return False


def _dns_open(hostname: str) -> bool:
    import socket

    try:
        return bool(socket.getaddrinfo(hostname, 443))
    except OSError:
        return False


def interface_names(proc_net_dev: str) -> list[str]:
    """Interface names from the text of ``/proc/net/dev`` (two header lines, then ``name: counters``)."""
    return [line.split(":", 1)[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line]


def only_loopback(path: str = "/proc/net/dev") -> bool:
    """True when this network namespace has no interface but ``lo``: no packet can leave it, so egress
    is closed without probing (a local ``--network=none`` sandbox). Anything else, or an unreadable
    file, is False and the real probe runs (a Pod always has its own interface)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return interface_names(handle.read()) == ["lo"]
    except OSError:
        return False


def egress_reachable(config: dict[str, Any], wait: float = 1.0) -> list[str]:
    """Probe egress in parallel; return the probes that got through (empty list = closed).

    A namespace with only a loopback interface is closed by construction and is not probed: importing
    ``socket`` and ``threading`` and running the probes cost 40-80 ms inside gVisor."""
    targets = [str(host) for host, _ in config["egress_probe_targets"]]
    if only_loopback() and not any(h.startswith("127.") or h in ("::1", "localhost") for h in targets):
        return []
    import threading

    opened: list[str] = []
    lock = threading.Lock()

    def probe(name: str, fn: Any, *args: Any) -> None:
        if fn(*args):
            with lock:
                opened.append(name)

    threads = [
        threading.Thread(target=probe, args=(f"tcp {h}:{p}", _tcp_open, str(h), int(p), wait), daemon=True)
        for h, p in config["egress_probe_targets"]
    ]
    hostname = config.get("egress_probe_hostname")
    if hostname:
        threads.append(
            threading.Thread(target=probe, args=(f"dns {hostname}", _dns_open, hostname), daemon=True)
        )
    for thread in threads:
        thread.start()
    end = time.monotonic() + wait + 0.5
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    with lock:
        return list(opened)


def wait_for_closed_egress(config: dict[str, Any]) -> str | None:
    """Return None once egress is closed, else an error message after ``egress_probe_timeout``."""
    give_up = time.monotonic() + float(config["egress_probe_timeout"])
    while True:
        opened = egress_reachable(config)
        if not opened:
            return None
        if time.monotonic() >= give_up:
            return f"network egress still open after {config['egress_probe_timeout']}s: {', '.join(opened)}"
        time.sleep(1.0)


# A result.json that is not a JSON object (or not JSON) is simply not `output` (Tako VM 0.3.0: exit 0 is
# `succeeded`, result.json is optional): noted in the envelope, the job not failed. Every limit (size, depth,
# non-finite numbers) is the user's error and fails the job as `invalid_output`.
NOT_JSON_NOTE = "result.json is not valid JSON, so it is not output"
NOT_OBJECT_NOTE = "result.json must hold a JSON object to be output"
NOT_OUTPUT_NOTES = (NOT_JSON_NOTE, NOT_OBJECT_NOTE)


def collect_output(config: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    path = os.path.join(config["output_dir"], "result.json")
    try:
        st = os.lstat(path)
    except OSError:
        return None, None
    if not os.path.isfile(path) or os.path.islink(path):
        return None, "result.json is not a regular file"
    if st.st_size > int(config["max_artifact_bytes"]):
        return None, f"result.json is larger than max_artifact_bytes={config['max_artifact_bytes']}"
    try:
        with open(path, "rb") as handle:
            value = json.loads(
                handle.read().decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float
            )
    except RecursionError:
        return None, f"result.json is nested deeper than max_output_depth={config['max_output_depth']}"
    except (OSError, ValueError) as exc:
        if "max_output_depth" in str(exc) or "finite" in str(exc):
            return None, f"result.json is not valid JSON: {exc}"
        return None, NOT_JSON_NOTE
    if not isinstance(value, dict):
        return None, NOT_OBJECT_NOTE
    problem = output_problem(value, int(config["max_output_depth"]))
    if problem:
        return None, f"result.json {problem}"
    return value, None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (only finite numbers are allowed)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range (only finite numbers are allowed)")
    return value


def output_problem(value: Any, max_depth: int) -> str | None:
    """Why ``value`` cannot be a job's ``output`` (nesting deeper than ``max_depth``, a non-finite
    number, a non-JSON type), or None. Iterative: a hostile value cannot exhaust the stack here."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return f"is nested deeper than max_output_depth={max_depth}"
            children = item.values() if isinstance(item, dict) else item
            if isinstance(item, dict) and not all(isinstance(key, str) for key in item):
                return "has a non-string key"
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return "holds a non-finite number (only finite numbers are allowed)"
        elif not (item is None or isinstance(item, (str, int, bool))):
            return f"holds a {type(item).__name__}, which is not JSON"
    return None


def collect_artifacts(config: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Regular, non-hidden files directly in output_dir, within the count, per-file and total caps.

    Each artifact is listed with its name, size and sha256 only: the files stay where they are and
    the host copies them itself, checking each against this sha256 (the envelope's MAC covers it).
    Files are hashed in chunks, so a 10 MiB artifact costs no 10 MiB of the job's memory here."""
    kept: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    per_file, total_cap = int(config["max_artifact_bytes"]), int(config["max_total_artifact_bytes"])
    count_cap = int(config["max_artifact_count"])
    total = 0
    try:
        names = sorted(os.listdir(config["output_dir"]))
    except OSError:
        return kept, skipped
    if names:
        import mimetypes
    for name in names:
        path = os.path.join(config["output_dir"], name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if name.startswith(".") or not stat_mod.S_ISREG(st.st_mode):
            continue
        if not name.isprintable():  # CR/LF and other controls would break the download's headers
            skipped.append({"name": repr(name), "size_bytes": st.st_size, "reason": "unprintable name"})
            continue
        if len(kept) >= count_cap:
            skipped.append({"name": name, "size_bytes": st.st_size, "reason": "count"})
            continue
        if st.st_size > per_file:
            skipped.append(
                {"name": name, "size_bytes": st.st_size, "reason": f"larger than {per_file} bytes"}
            )
            continue
        if total + st.st_size > total_cap:
            skipped.append(
                {"name": name, "size_bytes": st.st_size, "reason": f"total over {total_cap} bytes"}
            )
            continue
        try:
            size, digest = hash_file(path, per_file + 1)
        except OSError as exc:
            skipped.append({"name": name, "size_bytes": st.st_size, "reason": f"unreadable: {exc.strerror}"})
            continue
        if size > per_file or total + size > total_cap:
            skipped.append({"name": name, "size_bytes": size, "reason": "grew past the cap while reading"})
            continue
        total += size
        kept.append(
            {
                "name": name,
                "size_bytes": size,
                "sha256": digest,
                "content_type": mimetypes.guess_type(name)[0] or "application/octet-stream",
            }
        )
    return kept, skipped


HASH_CHUNK_BYTES = 1 << 20


def hash_file(path: str, limit: int) -> tuple[int, str]:
    """(bytes read, sha256 hex) of at most ``limit`` bytes of the regular file ``path`` (never a link)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file")
        digest, size = sha256(), 0
        while size < limit:
            chunk = os.read(fd, min(HASH_CHUNK_BYTES, limit - size))
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        return size, str(digest.hexdigest())
    finally:
        os.close(fd)


def output_full_problem(config: dict[str, Any], stderr: str) -> str | None:
    """Why the code failed when it failed for lack of room in /output (the total artifact cap), else None.

    The local executor's /output is a filesystem of ``max_total_artifact_bytes`` (+ 1 MiB): a write
    past it fails with ENOSPC, which the code usually does not handle. The error then names the limit."""
    if "No space left on device" not in stderr:
        return None
    cap = int(config["max_total_artifact_bytes"])
    used = 0
    try:
        with os.scandir(config["output_dir"]) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    used += entry.stat(follow_symlinks=False).st_size
    except OSError:
        return None
    if used < cap:
        return None
    line = next(text for text in reversed(stderr.splitlines()) if "No space left on device" in text)
    return (
        f"/output is full: artifacts may total at most max_total_artifact_bytes={cap} bytes "
        f"(the code failed writing past it: {line.strip()[:300]})"
    )


def do_run(config: dict[str, Any], t0: int) -> dict[str, Any]:
    env_out: dict[str, Any] = {
        "v": ENVELOPE_VERSION, "mode": "run", "error": None, "exit_code": None,
        "stdout": "", "stderr": "", "stdout_truncated": False, "stderr_truncated": False,
        "output": None, "artifacts": [], "resource_usage": None,
    }  # fmt: skip
    if config.get("egress_probe"):
        problem = wait_for_closed_egress(config)
        if problem:
            env_out["error"] = {"type": "egress_not_closed", "message": problem, "phase": "startup"}
            env_out["timing"] = {"startup_ms": now_ms() - t0, "execution_ms": 0, "total_ms": now_ms() - t0}
            return env_out
    env = base_env(config)
    if os.path.isdir(config["deps_dir"]):
        env["PYTHONPATH"] = config["deps_dir"]
    for key, value in (config.get("environment") or {}).items():
        env[str(key)] = str(value)
    started = now_ms()
    result = run_captured(
        [interpreter(config), "-u", config["code_path"]],
        env=env,
        cwd=config["work_dir"],
        timeout=float(config["timeout"]),
        grace=float(config["kill_grace_seconds"]),
        max_stdout=int(config["max_stdout_bytes"]),
        max_stderr=int(config["max_stderr_bytes"]),
        live=LiveForward() if config.get("live_output") else None,
    )
    execution_ms = now_ms() - started
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    env_out.update(
        exit_code=result["exit_code"],
        stdout=result["stdout"].text(),
        stderr=result["stderr"].text(),
        stdout_truncated=result["stdout"].truncated,
        stderr_truncated=result["stderr"].truncated,
        resource_usage={
            "max_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
            "cpu_time_ms": int((usage.ru_utime + usage.ru_stime) * 1000),
            "wall_time_ms": execution_ms,
        },
    )
    if result["timed_out"]:
        env_out["error"] = {
            "type": "execution_timeout",
            "message": f"execution exceeded timeout={config['timeout']}s",
            "phase": "execution",
        }
    kill_everything_else(config)  # nothing the user started may touch /output or stdout from here on
    output, output_error = collect_output(config)
    env_out["output"] = output
    if output_error:
        env_out["output_error"] = output_error
    if output_error in NOT_OUTPUT_NOTES:
        output_error = None  # the contract: output only for a JSON object; the job itself is not failed
    env_out["artifacts"], skipped = collect_artifacts(config)
    over_count = sum(1 for item in skipped if item["reason"] == "count")
    if over_count:
        found = len(env_out["artifacts"]) + over_count
        output_error = output_error or (
            f"/output holds {found} files; at most max_artifact_count={config['max_artifact_count']} "
            "are collected"
        )
        skipped = [item for item in skipped if item["reason"] != "count"][:100]
    if skipped:
        env_out["artifacts_skipped"] = skipped
    full = output_full_problem(config, env_out["stderr"]) if result["exit_code"] != 0 else None
    if full and env_out["error"] is None:  # the code died of a full /output: say which limit it hit
        env_out["error"] = {"type": "invalid_output", "message": full, "phase": "execution"}
    if output_error and result["exit_code"] == 0 and env_out["error"] is None:
        # The user's own mistake, reported as such; stdout, stderr and the artifacts stay in the record.
        env_out["error"] = {"type": "invalid_output", "message": output_error, "phase": "execution"}
    env_out["timing"] = {
        "startup_ms": started - t0,
        "execution_ms": execution_ms,
        "total_ms": now_ms() - t0,
    }
    return env_out


def load_config(path: str) -> dict[str, Any]:
    config = dict(DEFAULTS)
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = json.load(handle)
    except FileNotFoundError:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a JSON object")
    config.update(loaded)
    return config


def protect_self() -> None:
    """Make this process's /proc entries and memory unreadable to user code running as the same uid."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass


USAGE = "usage: runner.py {install,run} [--config PATH] [--frame-key-stdin]"


def parse_args(argv: list[str]) -> tuple[str, str, bool]:
    """``install|run [--config PATH] [--frame-key-stdin]`` (argparse costs tens of ms inside gVisor)."""
    mode, config, key_on_stdin = None, "/code/job.json", False
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--config" and rest:
            config = rest.pop(0)
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg == "--frame-key-stdin":
            key_on_stdin = True
        elif arg in ("install", "run") and mode is None:
            mode = arg
        else:
            raise SystemExit(f"{USAGE}\nrunner.py: unexpected argument {arg!r}")
    if mode is None:
        raise SystemExit(USAGE)
    return mode, config, key_on_stdin


def main(argv: list[str] | None = None, frame_key: bytes = b"") -> int:
    """Run one mode and print its frame; ``frame_key`` (or ``--frame-key-stdin``) adds the MAC line."""
    mode, config_path, key_on_stdin = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = now_ms()
    protect_self()
    if key_on_stdin:
        frame_key = read_frame_key()
    config: dict[str, Any] = dict(DEFAULTS)
    try:
        config = load_config(config_path)
        envelope = do_install(config, t0) if mode == "install" else do_run(config, t0)
    except Exception as exc:
        kill_everything_else(config)
        envelope = {
            "v": ENVELOPE_VERSION,
            "mode": mode,
            "exit_code": None,
            "error": {
                "type": "internal_error",
                "message": f"runner failed: {exc!r}"[:4096],
                "phase": "startup",
            },
            "timing": {"total_ms": now_ms() - t0},
        }
    text = frame(envelope)
    if frame_key:
        text += mac_line(frame_key, text)
    sys.stdout.flush()
    data = text.encode("ascii")
    while data:
        written = os.write(1, data)
        data = data[written:]
    return 0


if __name__ == "__main__":
    sys.exit(main())
