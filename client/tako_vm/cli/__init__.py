"""The `tako-vm` command: a package with one module per command group.

    tako-vm server [--backend local|kubernetes] [--host H] [--port P] [--data-dir D]  run the REST server
    tako-vm operator [--namespace NS ...]                              run the Kubernetes operator
    tako-vm run FILE.py | -c CODE | - [--input JSON] [-o DIR] [-d]     run code, exit with its code
    tako-vm logs|result|artifacts|cancel|rerun|fork JOB                one past job (id or unique prefix)
    tako-vm status [JOB]                                               one job's status (or the server's)
    tako-vm executions [--status S] [--limit N]                        recent executions as a table
    tako-vm config [--json]                                            the effective server configuration
    tako-vm completion bash|zsh|fish                                   a shell completion script
    tako-vm session new|run|list|rm, tako-vm repl                      stateful sessions (docs/sessions.md)
    tako-vm version | --version

Adding a command group: a module with ``register(subparsers, client_opts)`` that adds its parsers and
sets ``handler=`` on each (``handler(args, out, err) -> exit code``), listed in ``COMMAND_MODULES``.
`server`, `operator` and `config` import the server/operator packages lazily, so the SDK alone
(without aiohttp, kopf or the Kubernetes client) still gives the client commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from tako_vm._core import DEFAULT_BASE_URL
from tako_vm._version import __version__
from tako_vm.cli._common import (
    EXIT_API,
    EXIT_USAGE,
    JOB_EXIT_CODES,
    TERMINAL,
    CommandError,
    exit_code_for,
    format_duration,
    format_table,
    import_extra,
    parse_input,
)
from tako_vm.cli.errors import error_line
from tako_vm.cli.executions import EXECUTION_COLUMNS, execution_rows
from tako_vm.cli.run import POLL_STEPS, progress_line, wait_with_progress
from tako_vm.cli.server import mask_secrets
from tako_vm.errors import TakoVMError

__all__ = [
    "COMMAND_MODULES",
    "EXECUTION_COLUMNS",
    "EXIT_API",
    "EXIT_USAGE",
    "JOB_EXIT_CODES",
    "POLL_STEPS",
    "TERMINAL",
    "CommandError",
    "build_parser",
    "execution_rows",
    "exit_code_for",
    "format_duration",
    "format_table",
    "main",
    "mask_secrets",
    "parse_input",
    "progress_line",
    "wait_with_progress",
]

_import_extra = import_extra  # the name before the CLI became a package

COMMAND_MODULES = (
    "tako_vm.cli.server",
    "tako_vm.cli.run",
    "tako_vm.cli.jobs",
    "tako_vm.cli.status",
    "tako_vm.cli.executions",
    "tako_vm.cli.completion",
    "tako_vm.cli.session",
)
"""Each module's ``register(subparsers, client_opts)`` adds its commands, in this order."""


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (`tako-vm run: error: ...`) plus where to look, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def client_options() -> argparse.ArgumentParser:
    """--url, --api-key and --json, shared by every command that talks to a server."""
    client_opts = argparse.ArgumentParser(add_help=False)
    client_opts.add_argument(
        "--url", default=os.environ.get("TAKO_VM_URL", DEFAULT_BASE_URL), help="server URL (env TAKO_VM_URL)"
    )
    client_opts.add_argument(
        "--api-key", default=os.environ.get("TAKO_VM_API_KEY"), help="API key (env TAKO_VM_API_KEY)"
    )
    client_opts.add_argument("--json", action="store_true", help="print JSON instead of text")
    return client_opts


def _print_version(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    print(f"tako-vm {__version__}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="tako-vm", description="Run untrusted Python in gVisor sandboxes.")
    parser.add_argument(
        "-c", "--config", help="server configuration file (default: $TAKO_VM_CONFIG or ./tako_vm.yaml)"
    )
    parser.add_argument("--version", action="version", version=f"tako-vm {__version__}")
    client_opts = client_options()
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_OneLineParser
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands, client_opts)
    commands.add_parser("version", help="print the version").set_defaults(handler=_print_version)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    from tako_vm.cli.completion import autocomplete

    autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args, out, err))
    except CommandError as exc:
        print(f"tako-vm: {exc}", file=err)
        return exc.exit_code
    except TakoVMError as exc:
        print(f"tako-vm: {error_line(exc, getattr(args, 'url', None))}", file=err)
        return EXIT_API
    except KeyboardInterrupt:
        return 130
