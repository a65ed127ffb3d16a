"""The in-sandbox session runner: one Python namespace kept across calls (stdlib only).

It is PID 1 of a session's gVisor sandbox and runs user code in its own main thread, so a cell's
variables, imports, functions and the files it writes to the working directory stay for the next cell.

Channel (a host directory, never stdin: a sandbox restored from a checkpoint cannot be handed a new
pipe, but its bind mounts are re-attached by ``runsc restore``):
- ``<channel>/in`` (read-only here): the host writes ``req-<n>.json`` = ``{"code", "timeout"}``;
- ``<channel>/out`` (writable): this runner writes ``ready`` once at start, then ``resp-<n>.json``
  for each request (written to a ``.tmp`` name and renamed, so the host never reads half a reply).
  While request ``n`` runs, its output is also appended as it is written to ``live-<n>``, one line
  per write: ``TAKO-LIVE <stdout|stderr> <JSON string>`` (the kept part only, so the lines add up to
  the reply's text before its truncation notice); the host tails it for the live event stream.
Requests are numbered from 1 and handled strictly in order: one cell at a time.

Notebook semantics: when the cell's last statement is an expression, its value is evaluated
separately and ``result`` is its ``repr`` (None when the value is None or the cell ends with a
statement). A timeout raises ``KeyboardInterrupt`` in the cell (a notebook's interrupt); the session
lives on. Code that swallows the interrupt is killed from outside after a grace period.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import linecache
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

POLL_FAST_S = 0.002  # right after a call: the next one often follows at once
POLL_SLOW_S = 0.02
FAST_WINDOW_S = 2.0
MAX_REPR_CHARS = 65536


LiveSink = Callable[[str, str], None]  # (stream, text): each kept write, as it happens


class CappedText(io.TextIOBase):
    """A text sink keeping the first ``limit`` characters (sys.stdout/sys.stderr during a cell)."""

    def __init__(self, limit: int, name: str = "stdout", live: LiveSink | None = None) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False
        self.name = name
        self.live = live

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = self.limit - self.size
        if len(text) > room:
            self.truncated = True
            text = text[: max(room, 0)]
        if text:
            self.parts.append(text)
            self.size += len(text)
            if self.live is not None:
                self.live(self.name, text)
        return len(text)

    def value(self) -> str:
        text = "".join(self.parts)
        return text + "\n[TRUNCATED: output exceeded the limit]\n" if self.truncated else text


class _Timeout(KeyboardInterrupt):
    """The interrupt a cell gets when its timeout passes (a KeyboardInterrupt, as in a notebook)."""


def split_cell(source: str, filename: str) -> tuple[Any, Any]:
    """Compile a cell into (statements, last expression or None): notebook semantics."""
    tree = ast.parse(source, filename=filename, mode="exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        final = tree.body.pop()
        assert isinstance(final, ast.Expr)
        last = ast.Expression(body=final.value)
    body = compile(tree, filename, "exec")
    return body, (compile(last, filename, "eval") if last is not None else None)


def run_cell(
    namespace: dict[str, Any],
    source: str,
    number: int,
    timeout: float,
    max_output: int,
    live: LiveSink | None = None,
) -> dict[str, Any]:
    """Run one cell in ``namespace``; the reply the host gets (status, stdout, stderr, result, error).
    ``live`` sees each kept chunk of output as it is written."""
    filename = f"<cell-{number}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    out, err = CappedText(max_output, "stdout", live), CappedText(max_output, "stderr", live)
    saved = sys.stdout, sys.stderr
    started = time.monotonic()
    status, result, error = "succeeded", None, None

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        sys.stdout, sys.stderr = out, err
        try:
            body, last = split_cell(source, filename)
            signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
            try:
                exec(body, namespace)
                if last is not None:
                    value = eval(last, namespace)
                    if value is not None:
                        namespace["_"] = value
                        result = repr(value)[:MAX_REPR_CHARS]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            status = "timeout"
            error = {
                "type": "execution_timeout",
                "message": f"Execution timed out after {timeout:g} seconds (interrupted; session state kept)",
                "traceback": traceback.format_exc(limit=-8),
            }
        except BaseException as exc:  # user code may raise anything, SystemExit included
            status = "failed"
            error = {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc)[1:] if exc.__traceback__ else []),
            }
    finally:
        sys.stdout, sys.stderr = saved
        signal.signal(signal.SIGALRM, previous)
    return {
        "status": status,
        "stdout": out.value(),
        "stderr": err.value(),
        "stdout_truncated": out.truncated,
        "stderr_truncated": err.truncated,
        "result": result,
        "error": error,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


def write_reply(out_dir: str, number: int, reply: dict[str, Any]) -> None:
    final = os.path.join(out_dir, f"resp-{number}.json")
    tmp = final + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(reply, handle)
    os.replace(tmp, final)


def live_line(stream: str, text: str) -> bytes:
    """One live output line: ``TAKO-LIVE <stream> <JSON string>`` (ASCII, one line)."""
    return f"TAKO-LIVE {stream} {json.dumps(text)}\n".encode()


class LiveFile:
    """Appends live output lines to ``live-<n>`` in the channel (one ``os.write`` per chunk)."""

    def __init__(self, out_dir: str, number: int) -> None:
        path = os.path.join(out_dir, f"live-{number}")
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    def __call__(self, stream: str, text: str) -> None:
        with contextlib.suppress(OSError):  # a full channel loses live lines, never the cell's reply
            os.write(self.fd, live_line(stream, text))

    def close(self) -> None:
        os.close(self.fd)


def read_request(in_dir: str, number: int) -> dict[str, Any] | None:
    try:
        with open(os.path.join(in_dir, f"req-{number}.json"), encoding="utf-8") as handle:
            return dict(json.load(handle))
    except (FileNotFoundError, ValueError):
        return None  # not there yet (the host renames it into place, so never half-written)


def serve(channel: str, max_output: int, deps_dir: str | None) -> None:
    in_dir, out_dir = os.path.join(channel, "in"), os.path.join(channel, "out")
    if deps_dir and os.path.isdir(deps_dir):
        sys.path.insert(0, deps_dir)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    write_reply(out_dir, 0, {"status": "ready", "pid": os.getpid()})
    os.replace(os.path.join(out_dir, "resp-0.json"), os.path.join(out_dir, "ready"))
    number, last_activity = 1, time.monotonic()
    while True:
        request = read_request(in_dir, number)
        if request is None:
            idle = time.monotonic() - last_activity
            time.sleep(POLL_FAST_S if idle < FAST_WINDOW_S else POLL_SLOW_S)
            continue
        timeout = float(request.get("timeout") or 30)
        live = LiveFile(out_dir, number)
        try:
            reply = run_cell(namespace, str(request.get("code", "")), number, timeout, max_output, live)
        except KeyboardInterrupt:  # an interrupt between the cell and its reply: still a timeout
            error = {"type": "execution_timeout", "message": "interrupted", "traceback": ""}
            reply = {"status": "timeout", "stdout": "", "stderr": "", "result": None, "error": error}
        finally:
            live.close()
        write_reply(out_dir, number, reply)
        number += 1
        last_activity = time.monotonic()


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="session")
    parser.add_argument("--channel", default="/session")
    parser.add_argument("--max-output", type=int, default=65536)
    parser.add_argument("--deps", default="/deps")
    args = parser.parse_args(argv)
    os.chdir(os.environ.get("HOME", "/tmp"))
    serve(args.channel, args.max_output, args.deps)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
