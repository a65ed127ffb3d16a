"""`tako-vm run FILE.py | -c CODE | -`: submit, wait, print stdout/stderr, exit with the job's code.

Waiting is one function, `wait_for_result`: today it long-polls and prints a progress line when the
status changes; live output (the SSE stream, issue #13) replaces that function and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from tako_vm._client import Client
from tako_vm.cli._common import (
    JOB_EXIT_CODES,
    TERMINAL,
    CommandError,
    Subparsers,
    client_for,
    exit_code_for,
    format_duration,
    parse_input,
)
from tako_vm.cli.jobs import save_results
from tako_vm.errors import TakoVMError, WaitTimeoutError

POLL_STEPS = (1.0, 2.0, 5.0, 10.0)
"""Long-poll lengths while `run` waits: short at first so progress shows, then longer."""


def read_code(file: str | None, code: str | None, stdin: TextIO) -> tuple[str, str]:
    """(code, the name shown for it): from ``-c CODE``, from stdin for ``-``, or from FILE."""
    if code is not None and file is not None:
        raise CommandError("give either FILE.py (or - for stdin) or -c CODE, not both")
    if code is not None:
        return code, "<string>"
    if file is None:
        raise CommandError("nothing to run: give FILE.py, - (read stdin) or -c CODE")
    if file == "-":
        return stdin.read(), "<stdin>"
    path = Path(file)
    try:
        return path.read_text(), path.name
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CommandError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from exc


def progress_line(job_id: str, status: Mapping[str, Any], elapsed: float) -> str:
    state = str(status.get("status", "?"))
    position = status.get("queue_position")
    where = f" (queue position {position})" if state in {"pending", "queued"} and position else ""
    return f"tako-vm: job {job_id} {state}{where} after {elapsed:.1f}s"


def wait_for_result(client: Client, job_id: str, err: TextIO, *, quiet: bool = False) -> dict[str, Any]:
    """Long-poll until the job ends, printing a line on stderr whenever its status changes."""
    started = time.monotonic()
    last = ""
    step = 0
    while True:
        try:
            return client.get_result(job_id, timeout=POLL_STEPS[min(step, len(POLL_STEPS) - 1)])
        except WaitTimeoutError:
            step += 1
        status = client.get_status(job_id)
        if status.get("status") in TERMINAL:
            return client.get_result(job_id)
        line = progress_line(job_id, status, time.monotonic() - started)
        state = str(status.get("status"))
        if not quiet and state != last:
            print(line, file=err)
            last = state


wait_with_progress = wait_for_result  # the name before the CLI became a package


def summary_line(job_id: str, record: Mapping[str, Any], saved_to: str | None) -> str:
    """`job ID succeeded in 1.20s; wrote output and 2 artifacts (tako-vm result/artifacts ID)`."""
    status = record.get("status")
    line = f"tako-vm: job {job_id} {status} in {format_duration(record.get('duration_ms'))}"
    error = record.get("error")
    if status != "succeeded" and isinstance(error, Mapping):
        line += f" ({error.get('type')}: {error.get('message')})"
    wrote = []
    if record.get("output") is not None:
        wrote.append("output")
    count = len(record.get("artifacts") or [])
    if count:
        wrote.append(f"{count} artifact{'s' if count != 1 else ''}")
    if wrote:
        where = f"saved in {saved_to}" if saved_to else f"tako-vm result/artifacts {job_id[:12]}"
        line += f"; wrote {' and '.join(wrote)} ({where})"
    return line


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import sys

    code, name = read_code(args.file, args.code, sys.stdin)
    input_data = parse_input(args.input)
    with client_for(args) as client:
        job_id = client.submit_code(
            code,
            input_data,
            timeout=args.timeout,
            job_type=args.job_type,
            requirements=args.requirement or None,
        )
        if args.detach:
            print(job_id, file=out)
            return 0
        if not args.quiet:
            print(f"tako-vm: submitted {name} as job {job_id}", file=err)
        try:
            record = wait_for_result(client, job_id, err, quiet=args.quiet)
            if record.get("artifacts") is None:  # the slim record has no artifact list
                with contextlib.suppress(TakoVMError):
                    record = {**record, **client.get_execution(job_id, view="full")}
            if args.output:
                save_results(client, job_id, record, Path(args.output))
        except KeyboardInterrupt:
            with contextlib.suppress(TakoVMError):  # it may have finished meanwhile
                client.cancel(job_id)
            print(f"\ntako-vm: cancelled job {job_id}", file=err)
            return JOB_EXIT_CODES["cancelled"]
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True), file=out)
        return exit_code_for(record)
    if record.get("stdout"):
        out.write(record["stdout"])
        out.flush()
    if record.get("stderr"):
        err.write(record["stderr"])
    if not args.quiet:
        print(summary_line(job_id, record, args.output), file=err)
    return exit_code_for(record)


def register(commands: Subparsers, client_opts: argparse.ArgumentParser) -> None:
    run = commands.add_parser(
        "run", parents=[client_opts], help="run Python code in a sandbox and exit with its exit code"
    )
    run.add_argument("file", nargs="?", metavar="FILE.py", help="the code to run ('-': read stdin)")
    run.add_argument("-c", "--code", help="the code as a string, instead of FILE.py")
    run.add_argument("--input", help="input data: a JSON object, or @file.json")
    run.add_argument("--timeout", type=int, help="execution time limit in seconds")
    run.add_argument("--job-type", help="a pre-built environment (name or name@version)")
    run.add_argument("-r", "--requirement", action="append", help="pip requirement (repeatable)")
    run.add_argument("-o", "--output", metavar="DIR", help="save the job's output.json and artifacts in DIR")
    run.add_argument("-d", "--detach", action="store_true", help="print the job id and return at once")
    run.add_argument("-q", "--quiet", action="store_true", help="only the job's own stdout and stderr")
    run.set_defaults(handler=cmd_run)
