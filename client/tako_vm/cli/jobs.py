"""Commands on one past job, as `docker logs|inspect|cp` are on a container:
`tako-vm logs|result|artifacts|cancel|rerun|fork JOB`. Every JOB accepts a unique id prefix."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from tako_vm._client import Client
from tako_vm.cli._common import EXIT_API, CommandError, Subparsers, client_for, print_json
from tako_vm.errors import NotFoundError

FULL_ID_LENGTH = 36
"""A job id is a UUID; anything shorter is a prefix."""
PREFIX_SCAN_PAGES = 10
PREFIX_PAGE = 1000
"""A prefix is looked up among the newest PREFIX_SCAN_PAGES * PREFIX_PAGE executions."""


def matching_ids(prefix: str, ids: list[str]) -> list[str]:
    """The ids starting with ``prefix`` (case-insensitive), in the order given, without repeats."""
    wanted = prefix.lower()
    return list(dict.fromkeys(i for i in ids if i.lower().startswith(wanted)))


def resolve_job_id(client: Client, job: str) -> str:
    """A full id as given; a prefix -> the one execution id starting with it (docker's rule)."""
    if len(job) >= FULL_ID_LENGTH:
        return job
    if not job:
        raise CommandError("JOB: empty job id")
    seen: list[str] = []
    for page in range(PREFIX_SCAN_PAGES):
        listing = client.list_executions(limit=PREFIX_PAGE, offset=page * PREFIX_PAGE)
        seen += [str(item.get("execution_id", "")) for item in listing.get("items") or []]
        if not listing.get("has_more"):
            break
    found = matching_ids(job, seen)
    if not found:
        raise CommandError(f"no job id starts with {job!r}", EXIT_API)
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
        raise CommandError(
            f"job id prefix {job!r} is ambiguous ({len(found)} jobs: {shown}); type more of it"
        )
    return found[0]


def safe_artifact_path(directory: Path, name: str) -> Path:
    """Where artifact ``name`` goes under ``directory``; a name leaving it is refused."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise CommandError(f"artifact name {name!r} is not a relative path; not saved", EXIT_API)
    return directory.joinpath(*parts)


def save_results(client: Client, job_id: str, record: Mapping[str, Any], directory: Path) -> list[Path]:
    """Write the job's ``output`` (as output.json) and its artifacts under ``directory``."""
    import json

    written: list[Path] = []
    directory.mkdir(parents=True, exist_ok=True)
    if record.get("output") is not None:
        target = directory / "output.json"
        target.write_text(json.dumps(record["output"], indent=2, sort_keys=True) + "\n")
        written.append(target)
    for artifact in record.get("artifacts") or []:
        target = safe_artifact_path(directory, str(artifact["name"]))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.download_artifact(job_id, str(artifact["name"])))
        written.append(target)
    return written


def full_record(client: Client, job_id: str) -> dict[str, Any]:
    try:
        return client.get_execution(job_id, view="full")
    except NotFoundError as exc:
        raise CommandError(f"no job {job_id}", EXIT_API) from exc


def cmd_logs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        record = full_record(client, resolve_job_id(client, args.job))
    if args.json:
        print_json({"stdout": record.get("stdout", ""), "stderr": record.get("stderr", "")}, out)
        return 0
    out.write(record.get("stdout") or "")
    out.flush()
    err.write(record.get("stderr") or "")
    return 0


def cmd_result(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        job_id = resolve_job_id(client, args.job)
        record = full_record(client, job_id)
    if record.get("output") is None:
        print(
            f"tako-vm: job {job_id} ({record.get('status')}) wrote no output (/output/result.json)", file=err
        )
        return 1
    print_json(record["output"], out)
    return 0


def cmd_artifacts(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        job_id = resolve_job_id(client, args.job)
        record = full_record(client, job_id)
        artifacts = record.get("artifacts") or []
        if args.json and not args.output:
            print_json(artifacts, out)
            return 0
        if not args.output:
            for artifact in artifacts:
                print(f"{artifact['size_bytes']:>10}  {artifact['name']}", file=out)
            if not artifacts:
                print(f"tako-vm: job {job_id} wrote no artifacts", file=err)
            return 0
        written = save_results(client, job_id, {"artifacts": artifacts}, Path(args.output))
    for path in written:
        print(path, file=out)
    if not written:
        print(f"tako-vm: job {job_id} wrote no artifacts", file=err)
    return 0


def cmd_cancel(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        job_id = resolve_job_id(client, args.job)
        answer = client.cancel(job_id)
    if args.json:
        print_json(answer, out)
    else:
        print(f"tako-vm: cancelled job {job_id}", file=err)
    return 0


def cmd_rerun(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with client_for(args) as client:
        job_id = resolve_job_id(client, args.job)
        new_id = client.rerun(job_id, job_type=args.job_type, timeout=args.timeout)
    print(new_id, file=out)
    return 0


def cmd_fork(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tako_vm.cli.run import read_code

    code, _ = read_code(args.file, args.code, sys.stdin)
    with client_for(args) as client:
        job_id = resolve_job_id(client, args.job)
        new_id = client.fork(job_id, code, job_type=args.job_type, timeout=args.timeout)
    print(new_id, file=out)
    return 0


def register(commands: Subparsers, client_opts: argparse.ArgumentParser) -> None:
    def job_command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[client_opts], help=help_text)
        parser.add_argument("job", metavar="JOB", help="job id or a unique prefix of it")
        return parser

    job_command("logs", "a past job's stdout (on stdout) and stderr (on stderr)").set_defaults(
        handler=cmd_logs
    )
    job_command("result", "a job's output (/output/result.json) as JSON").set_defaults(handler=cmd_result)
    artifacts = job_command("artifacts", "list a job's artifacts, or download them with -o DIR")
    artifacts.add_argument("-o", "--output", metavar="DIR", help="save the artifacts under DIR")
    artifacts.set_defaults(handler=cmd_artifacts)
    job_command("cancel", "cancel a queued or running job").set_defaults(handler=cmd_cancel)
    for name, help_text, handler in (
        ("rerun", "run a finished job again (same code and input); prints the new job id", cmd_rerun),
        ("fork", "run new code on a finished job's input; prints the new job id", cmd_fork),
    ):
        parser = job_command(name, help_text)
        if name == "fork":
            parser.add_argument("file", nargs="?", metavar="FILE.py", help="the new code ('-': stdin)")
            parser.add_argument("-c", "--code", help="the new code as a string")
        parser.add_argument("--job-type", help="another job type")
        parser.add_argument("--timeout", type=int, help="another time limit in seconds")
        parser.set_defaults(handler=handler)
