"""`tako-vm status [JOB]`: one job's status, or what a user needs to know about the server."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, TextIO

from tako_vm.cli._common import Subparsers, client_for, format_duration, print_json
from tako_vm.cli.jobs import resolve_job_id


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def server_lines(health: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`GET /health` as labelled lines (no raw JSON, no Docker-era fields)."""
    queue = health.get("queue_stats") or {}
    pool = health.get("warm_pool") or {}
    auth = health.get("auth_enabled")
    runtime = _or_dash(health.get("runtime"))
    if health.get("runsc_version"):
        runtime += f" {health['runsc_version']}"
    if health.get("platform"):
        runtime += f" (platform {health['platform']})"
    lines = [
        ("server", f"{_or_dash(health.get('status'))}, version {_or_dash(health.get('version'))}"),
        ("backend", _or_dash(health.get("backend"))),
        ("sandbox", runtime),
        ("security mode", _or_dash(health.get("security_mode"))),
        ("cgroups", _or_dash(health.get("cgroup"))),
        ("data dir", _or_dash(health.get("data_dir"))),
        (
            "warm pool",
            f"{pool.get('filled', 0)}/{pool.get('target', 0)} ready" if pool else "-",
        ),
        ("auth", "-" if auth is None else ("on" if auth else "off")),
        (
            "queue",
            f"{queue.get('pending', 0)} pending, {queue.get('running', 0)} running "
            f"({queue.get('max_workers', '-')} workers, room for {queue.get('max_queue_size', '-')})",
        ),
    ]
    lines += [("warning", str(text)) for text in health.get("warnings") or []]
    return lines


def job_lines(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    lines = [
        ("job", _or_dash(status.get("job_id"))),
        ("status", _or_dash(status.get("status"))),
        ("created", _or_dash(status.get("created_at"))),
        ("duration", format_duration(status.get("duration_ms"))),
    ]
    if status.get("queue_position"):
        lines.append(("queue position", str(status["queue_position"])))
    return lines


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        data = client.get_status(resolve_job_id(client, args.job_id)) if args.job_id else client.health()
    if args.json:
        print_json(data, out)
        return 0
    lines = job_lines(data) if args.job_id else server_lines(data)
    for label, value in lines:
        print(f"{label + ':':<15} {value}", file=out)
    return 0


def register(commands: Subparsers, client_opts: argparse.ArgumentParser) -> None:
    status = commands.add_parser("status", parents=[client_opts], help="a job's status, or the server's")
    status.add_argument("job_id", nargs="?", metavar="JOB", help="job id or a unique prefix of it")
    status.set_defaults(handler=cmd_status)
