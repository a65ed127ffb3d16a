"""`tako-vm executions`: recent executions as a table."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from tako_vm.cli._common import (
    TERMINAL,
    CommandError,
    Subparsers,
    client_for,
    exit_code_for,
    format_duration,
    format_table,
    print_json,
)

EXECUTION_COLUMNS = ("EXECUTION ID", "STATUS", "JOB TYPE", "EXIT", "DURATION", "CREATED", "ERROR")
STATUSES = ("queued", "pending", "running", *sorted(TERMINAL))
MAX_LIMIT = 1000


def shown_exit(item: Mapping[str, Any]) -> str:
    """The EXIT column: the code `tako-vm run` exits with (124 timeout, 137 oom, 130 cancelled)."""
    status = item.get("status")
    if status in {"queued", "running", "pending"}:
        return "-"
    if status == "failed" and item.get("exit_code") is None:
        return "-"
    return str(exit_code_for(item))


def execution_rows(items: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for item in items:
        error = item.get("error") or {}
        rows.append(
            [
                str(item.get("execution_id", "")),
                str(item.get("status", "")),
                str(item.get("job_type") or "-"),
                shown_exit(item),
                format_duration(item.get("duration_ms")),
                str(item.get("created_at") or "-")[:19].replace("T", " "),
                str(error.get("type") or "") if isinstance(error, Mapping) else "",
            ]
        )
    return rows


def positive_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MAX_LIMIT}, got {text!r}"
        ) from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_LIMIT}, got {value}")
    return value


def cmd_executions(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.offset < 0:
        raise CommandError(f"--offset: must be 0 or more, got {args.offset}")
    with client_for(args) as client:
        page = client.list_executions(
            status=args.status, job_type=args.job_type, limit=args.limit, offset=args.offset
        )
    if args.json:
        print_json(page, out)
        return 0
    items = page.get("items") or []
    if not items:
        print("no executions", file=out)
        return 0
    print(format_table(execution_rows(items), EXECUTION_COLUMNS), file=out)
    if page.get("has_more"):
        print(f"... more: --offset {args.offset + len(items)}", file=out)
    return 0


def register(commands: Subparsers, client_opts: argparse.ArgumentParser) -> None:
    executions = commands.add_parser("executions", parents=[client_opts], help="recent executions as a table")
    executions.add_argument("--status", choices=STATUSES, help="only this status")
    executions.add_argument("--job-type", help="only this job type")
    executions.add_argument(
        "--limit", type=positive_limit, default=20, help=f"rows per page (1..{MAX_LIMIT}, default 20)"
    )
    executions.add_argument("--offset", type=int, default=0)
    executions.set_defaults(handler=cmd_executions)
