"""The `tako-vm` command.

    tako-vm server [--backend local|kubernetes] [--host H] [--port P] [--data-dir D]  run the REST server
    tako-vm operator [--namespace NS ...]                              run the Kubernetes operator
    tako-vm run FILE.py [--input JSON] [--timeout S] [-r REQ ...]       run a file, exit with its code
    tako-vm status [JOB_ID]                                            one job's status (or server health)
    tako-vm executions [--status S] [--limit N]                        recent executions as a table
    tako-vm config [--json]                                            the effective server configuration
    tako-vm version

`server`, `operator` and `config` import the server/operator packages lazily, so the SDK alone
(without aiohttp, kopf or the Kubernetes client) still gives `run`, `status` and `executions`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tako_vm._client import Client
from tako_vm._core import DEFAULT_BASE_URL
from tako_vm._version import __version__
from tako_vm.errors import TakoVMError, WaitTimeoutError

EXIT_USAGE = 2
"""Bad arguments, unreadable file, invalid configuration, missing extra."""
EXIT_API = 3
"""The server could not be reached or refused the request."""
JOB_EXIT_CODES = {"timeout": 124, "oom": 137, "cancelled": 130}
"""Exit codes of `tako-vm run` for jobs that did not end with an exit code of their own."""
TERMINAL = frozenset({"succeeded", "failed", "timeout", "oom", "cancelled"})
POLL_STEPS = (1.0, 2.0, 5.0, 10.0)
"""Long-poll lengths while `run` waits: short at first so progress shows, then longer."""


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------------
# Pure helpers


def exit_code_for(record: Mapping[str, Any]) -> int:
    """The exit code of `tako-vm run`: the job's own, 124 timeout, 137 oom, 130 cancelled."""
    status = record.get("status")
    if status == "succeeded":
        return 0
    if status in JOB_EXIT_CODES:
        return JOB_EXIT_CODES[str(status)]
    code = record.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def parse_input(text: str | None) -> dict[str, Any]:
    """`--input`: a JSON object, or `@path` to a file holding one."""
    if text is None:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise CommandError(f"--input: cannot read {text[1:]}: {exc.strerror or exc}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--input: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CommandError(f"--input: must be a JSON object, got {type(value).__name__}")
    return value


def format_duration(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "-"
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def format_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces, like `kubectl get`."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


EXECUTION_COLUMNS = ("EXECUTION ID", "STATUS", "JOB TYPE", "EXIT", "DURATION", "CREATED", "ERROR")


def execution_rows(items: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for item in items:
        error = item.get("error") or {}
        rows.append(
            [
                str(item.get("execution_id", "")),
                str(item.get("status", "")),
                str(item.get("job_type") or "-"),
                "-" if item.get("exit_code") is None else str(item["exit_code"]),
                format_duration(item.get("duration_ms")),
                str(item.get("created_at") or "-")[:19].replace("T", " "),
                str(error.get("type") or "") if isinstance(error, Mapping) else "",
            ]
        )
    return rows


def mask_secrets(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the settings with API keys shown as their first 4 characters only."""
    shown = dict(settings)
    keys = shown.get("api_keys")
    if isinstance(keys, Mapping):
        shown["api_keys"] = {f"{key[:4]}…(masked)": tenant for key, tenant in keys.items()}
    return shown


def progress_line(job_id: str, status: Mapping[str, Any], elapsed: float) -> str:
    state = str(status.get("status", "?"))
    position = status.get("queue_position")
    where = f" (queue position {position})" if state in {"pending", "queued"} and position else ""
    return f"tako-vm: job {job_id} {state}{where} after {elapsed:.1f}s"


# ---------------------------------------------------------------------------------------------
# Commands


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def _import_extra(module: str, what: str, extra: str) -> Any:
    """Import a server-side module; if its dependencies are missing say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise CommandError(f"{what} is not available in this installation ({module} is missing)") from exc
        raise CommandError(
            f"{what} needs the '{extra}' extra ({exc.name} is not installed): "
            f"pip install 'tako-vm-k8s[{extra}]'"
        ) from exc


def cmd_server(args: argparse.Namespace) -> int:
    server = _import_extra("tako_shim.server", "tako-vm server", "server")
    config = _import_extra("tako_shim.config", "tako-vm server", "server")
    try:
        server.run_server(args.config, args.backend, args.host, args.port, args.data_dir)
    except config.ConfigError as exc:
        raise CommandError(str(exc)) from exc
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    main = _import_extra("tako_operator.main", "tako-vm operator", "operator")
    run_operator: Callable[..., Any] | None = getattr(main, "run_operator", None)
    if run_operator is None:
        raise CommandError("tako-vm operator: tako_operator.main has no run_operator() in this build")
    if args.namespace and args.all_namespaces:
        raise CommandError("--namespace and --all-namespaces are mutually exclusive")
    run_operator(
        namespaces=args.namespace or None,
        all_namespaces=args.all_namespaces,
        peering=args.peering,
        standalone=args.peering is None,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        kubeconfig=args.kubeconfig,
        leader_election=args.leader_election,
        leader_election_namespace=args.leader_election_namespace,
    )
    return 0


def cmd_config(args: argparse.Namespace, out: TextIO) -> int:
    config = _import_extra("tako_shim.config", "tako-vm config", "server")
    try:
        settings = config.load_settings(args.config, overrides={"backend": args.backend})
    except config.ConfigError as exc:
        raise CommandError(str(exc)) from exc
    shown = mask_secrets(settings.model_dump(mode="json"))
    if args.json:
        print(json.dumps(shown, indent=2, sort_keys=True), file=out)
    else:
        import yaml

        print(yaml.safe_dump(shown, sort_keys=True, allow_unicode=True).rstrip(), file=out)
    return 0


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = Path(args.file)
    try:
        code = path.read_text()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    input_data = parse_input(args.input)
    with _client(args) as client:
        job_id = client.submit_code(
            code,
            input_data,
            timeout=args.timeout,
            job_type=args.job_type,
            requirements=args.requirement or None,
        )
        print(f"tako-vm: submitted {path.name} as job {job_id}", file=err)
        try:
            record = wait_with_progress(client, job_id, err, quiet=args.quiet)
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
    status = record.get("status")
    summary = f"tako-vm: job {job_id} {status} in {format_duration(record.get('duration_ms'))}"
    error = record.get("error")
    if status != "succeeded" and isinstance(error, Mapping):
        summary += f" ({error.get('type')}: {error.get('message')})"
    print(summary, file=err)
    return exit_code_for(record)


def wait_with_progress(client: Client, job_id: str, err: TextIO, *, quiet: bool = False) -> dict[str, Any]:
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


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        data = client.get_status(args.job_id) if args.job_id else client.health()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True), file=out)
        return 0
    for key, value in data.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else ("-" if value is None else value)
        print(f"{key + ':':<16} {shown}", file=out)
    return 0


def cmd_executions(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        page = client.list_executions(
            status=args.status, job_type=args.job_type, limit=args.limit, offset=args.offset
        )
    if args.json:
        print(json.dumps(page, indent=2, sort_keys=True), file=out)
        return 0
    items = page.get("items") or []
    if not items:
        print("no executions", file=out)
        return 0
    print(format_table(execution_rows(items), EXECUTION_COLUMNS), file=out)
    if page.get("has_more"):
        print(f"... more: --offset {args.offset + len(items)}", file=out)
    return 0


# ---------------------------------------------------------------------------------------------
# Parsing and dispatch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tako-vm", description="Run untrusted Python in gVisor sandboxes.")
    parser.add_argument(
        "-c", "--config", help="server configuration file (default: $TAKO_VM_CONFIG or ./tako_vm.yaml)"
    )
    client_opts = argparse.ArgumentParser(add_help=False)
    client_opts.add_argument(
        "--url", default=os.environ.get("TAKO_VM_URL", DEFAULT_BASE_URL), help="server URL (env TAKO_VM_URL)"
    )
    client_opts.add_argument(
        "--api-key", default=os.environ.get("TAKO_VM_API_KEY"), help="API key (env TAKO_VM_API_KEY)"
    )
    client_opts.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = commands.add_parser("server", help="run the REST server (local gVisor or kubernetes backend)")
    server.add_argument("--backend", choices=["local", "kubernetes"], help="default: the config's backend")
    server.add_argument("--host", help="bind address (non-loopback needs auth)")
    server.add_argument("--port", type=int, help="port (0 = any free port)")
    server.add_argument("--data-dir", help="state directory; one server per data dir (default: ~/.tako_vm)")

    operator = commands.add_parser("operator", help="run the Kubernetes operator")
    operator.add_argument("--namespace", action="append", help="watch only this namespace (repeatable)")
    operator.add_argument("--all-namespaces", action="store_true", help="watch PythonJobs in every namespace")
    operator.add_argument(
        "--peering", help="kopf peering object for active/standby replicas (default: standalone)"
    )
    operator.add_argument(
        "--leader-election",
        metavar="LEASE",
        help="replicas started alike elect one leader through this coordination.k8s.io Lease",
    )
    operator.add_argument(
        "--leader-election-namespace", metavar="NS", help="the Lease's namespace (default: $POD_NAMESPACE)"
    )
    operator.add_argument("--liveness", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    operator.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    operator.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster or ~/.kube/config)")

    run = commands.add_parser(
        "run", parents=[client_opts], help="run a Python file and exit with its exit code"
    )
    run.add_argument("file", metavar="FILE.py")
    run.add_argument("--input", help="input data: a JSON object, or @file.json")
    run.add_argument("--timeout", type=int, help="execution time limit in seconds")
    run.add_argument("--job-type", help="a pre-built environment (name or name@version)")
    run.add_argument("-r", "--requirement", action="append", help="pip requirement (repeatable)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    status = commands.add_parser(
        "status", parents=[client_opts], help="a job's status, or the server's health"
    )
    status.add_argument("job_id", nargs="?", metavar="JOB_ID")

    executions = commands.add_parser("executions", parents=[client_opts], help="recent executions as a table")
    executions.add_argument("--status", help="only this status (succeeded, failed, timeout, ...)")
    executions.add_argument("--job-type", help="only this job type")
    executions.add_argument("--limit", type=int, default=20, help="rows per page (1..1000, default 20)")
    executions.add_argument("--offset", type=int, default=0)

    config = commands.add_parser("config", help="print the effective server configuration (secrets masked)")
    config.add_argument("--backend", choices=["local", "kubernetes"])
    config.add_argument("--json", action="store_true", help="JSON instead of YAML")

    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "server":
            return cmd_server(args)
        if args.command == "operator":
            return cmd_operator(args)
        if args.command == "config":
            return cmd_config(args, out)
        if args.command == "run":
            return cmd_run(args, out, err)
        if args.command == "status":
            return cmd_status(args, out)
        if args.command == "executions":
            return cmd_executions(args, out)
        print(f"tako-vm {__version__}", file=out)
        return 0
    except CommandError as exc:
        print(f"tako-vm: {exc}", file=err)
        return exc.exit_code
    except TakoVMError as exc:
        print(f"tako-vm: {exc}", file=err)
        return EXIT_API
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
