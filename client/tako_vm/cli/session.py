"""`tako-vm session new|run|list|rm` and `tako-vm repl`: stateful sessions from the shell (docs/sessions.md).

    sid=$(tako-vm session new)
    tako-vm session run "$sid" -c 'x = 21'
    tako-vm session run "$sid" -c 'x * 2'          # prints 42
    tako-vm session rm "$sid"
    tako-vm repl                                    # an interactive prompt bound to a new session

`session run` prints the cell's output live, as it is written (`--json`: only the record, at the end).
Exit codes of `session run`: 0 succeeded, 1 failed, 124 timeout, 3 API error (410: the session ended).
"""

from __future__ import annotations

import argparse
import codeop
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from tako_vm._sessions import Session, run_streaming
from tako_vm._stream import OutputEvent
from tako_vm.cli._common import CommandError, Subparsers, client_for, format_table, print_json
from tako_vm.models.sessions import SessionExecution

EXIT_FOR_STATUS = {"succeeded": 0, "failed": 1, "timeout": 124, "cancelled": 130}
HISTORY_FILE = "~/.tako_vm_history"
SESSION_COLUMNS = ("SESSION", "STATUS", "CALLS", "EXPIRES", "ENDED")


def _creation_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "job_type": args.job_type,
        "requirements": args.requirement or None,
        "ttl_seconds": args.ttl,
        "idle_timeout_seconds": args.idle_timeout,
        "memory_limit": args.memory,
    }
    return {k: v for k, v in options.items() if v is not None}


def print_execution(
    record: SessionExecution, out: TextIO, err: TextIO, *, output_shown: bool = False
) -> None:
    """A cell's outcome the way a notebook shows it: output (unless ``output_shown`` live), errors,
    then the last expression's repr."""
    if record.stdout:
        shown = "" if output_shown else record.stdout
        out.write(shown if record.stdout.endswith("\n") else shown + "\n")
    if record.stderr:
        shown = "" if output_shown else record.stderr
        err.write(shown if record.stderr.endswith("\n") else shown + "\n")
    if record.error is not None:
        err.write((record.error.traceback or "") + f"{record.error.type}: {record.error.message}\n")
    if record.result is not None:
        out.write(record.result + "\n")


def _code_from(args: argparse.Namespace) -> str:
    if args.code is not None:
        return str(args.code)
    if args.file in (None, "-"):
        return sys.stdin.read()
    try:
        return Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None


def cmd_new(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        info = client.create_session(**_creation_options(args))
    if args.json:
        print_json(info.model_dump(mode="json"), out)
    else:
        print(info.session_id, file=out)
    return 0


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    code = _code_from(args)
    if args.json:
        with client_for(args) as client:
            record = client.run_in_session(args.session_id, code, timeout=args.timeout)
        print_json(record.model_dump(mode="json"), out)
        return EXIT_FOR_STATUS.get(record.status, 1)

    def show(event: OutputEvent) -> None:
        sink = out if event.type == "stdout" else err
        sink.write(event.text)
        sink.flush()

    with client_for(args) as client:
        record = run_streaming(client, args.session_id, code, show, timeout=args.timeout)
    print_execution(record, out, err, output_shown=True)
    return EXIT_FOR_STATUS.get(record.status, 1)


def session_rows(items: list[Any]) -> list[list[str]]:
    return [
        [s.session_id, s.status if not s.end_reason else f"ended ({s.end_reason})", str(s.executions),
         s.expires_at[:19], (s.ended_at or "-")[:19]]
        for s in items
    ]  # fmt: skip


def cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        items = client.list_sessions()
    if not args.all:
        items = [s for s in items if s.status != "ended"]
    if args.json:
        print_json([s.model_dump(mode="json") for s in items], out)
    elif items:
        print(format_table(session_rows(items), SESSION_COLUMNS), file=out)
    else:
        print("no sessions", file=out)
    return 0


def cmd_rm(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        for session_id in args.session_ids:
            client.delete_session(session_id)
            print(f"deleted {session_id}", file=out)
    return 0


@contextlib.contextmanager
def _history() -> Iterator[None]:
    """Line editing and a persistent history when ``readline`` exists (not on every platform)."""
    try:
        import readline
    except ImportError:
        yield
        return
    path = os.path.expanduser(HISTORY_FILE)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)


def repl_loop(
    run: Callable[[str], SessionExecution], read: Callable[[str], str], out: TextIO, err: TextIO
) -> int:
    """Read cells (continuation lines while the input is incomplete, as Python's own prompt does),
    run each in the session, print its outcome; ends at EOF (Ctrl-D) or `exit()`/`quit()`."""
    while True:
        lines: list[str] = []
        try:
            while True:
                lines.append(read("... " if lines else ">>> "))
                source = "\n".join(lines)
                try:
                    if codeop.compile_command(source, "<repl>", "exec") is not None:
                        break  # complete (compiled here only to know; it runs in the sandbox)
                except (SyntaxError, ValueError, OverflowError):
                    break  # let the sandbox report it, with its traceback
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\nKeyboardInterrupt\n")
            continue
        if not source.strip():
            continue
        if source.strip() in ("exit()", "quit()", "exit", "quit"):
            return 0
        print_execution(run(source), out, err)


def cmd_repl(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client, Session(client, **_creation_options(args)) as session:
        print(
            f"tako-vm session {session.session_id} (gVisor; state kept between inputs; Ctrl-D ends it)",
            file=out,
        )

        def run(code: str) -> SessionExecution:
            return session.run(code, timeout=args.timeout)

        with _history():
            return repl_loop(run, input, out, err)


def _add_creation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job-type", help="job type (pre-built environment)")
    parser.add_argument("--requirement", "-r", action="append", help="pip requirement (repeatable)")
    parser.add_argument("--ttl", type=int, help="lifetime in seconds (default 3600)")
    parser.add_argument("--idle-timeout", type=int, help="end after this many idle seconds (default 600)")
    parser.add_argument("--memory", help="memory limit, e.g. 1g")


def register(commands: Subparsers, client_opts: argparse.ArgumentParser) -> None:
    group = commands.add_parser("session", help="stateful sessions: new, run, list, rm")
    verbs = group.add_subparsers(dest="session_command", required=True, metavar="VERB")
    new = verbs.add_parser("new", parents=[client_opts], help="start a session; prints its id")
    _add_creation_options(new)
    new.set_defaults(handler=cmd_new)
    run = verbs.add_parser("run", parents=[client_opts], help="run code in a session")
    run.add_argument("session_id", metavar="SESSION")
    run.add_argument("file", nargs="?", metavar="FILE", help="a .py file, or - for stdin (default)")
    run.add_argument("-c", dest="code", metavar="CODE", help="the code itself")
    run.add_argument("--timeout", type=int, help="seconds before the cell is interrupted")
    run.set_defaults(handler=cmd_run)
    listing = verbs.add_parser("list", parents=[client_opts], help="your open sessions (--all: ended too)")
    listing.add_argument("--all", action="store_true")
    listing.set_defaults(handler=cmd_list)
    rm = verbs.add_parser("rm", parents=[client_opts], help="end sessions")
    rm.add_argument("session_ids", nargs="+", metavar="SESSION")
    rm.set_defaults(handler=cmd_rm)
    repl = commands.add_parser(
        "repl", parents=[client_opts], help="an interactive Python prompt in a new session"
    )
    _add_creation_options(repl)
    repl.add_argument("--timeout", type=int, help="seconds before an input is interrupted")
    repl.set_defaults(handler=cmd_repl)
