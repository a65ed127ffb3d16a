"""What every `tako-vm` command module shares: exit codes, the user-facing error, formatting helpers.

A command module exposes ``register(subparsers, client_opts)``: it adds its sub-parsers and sets
``handler=`` on each (``handler(args, out, err) -> exit code``). ``tako_vm.cli.COMMAND_MODULES``
lists the modules; adding a command group is one line there.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from tako_vm._client import Client

EXIT_USAGE = 2
"""Bad arguments, unreadable file, invalid configuration, missing extra."""
EXIT_API = 3
"""The server could not be reached or refused the request."""
JOB_EXIT_CODES = {"timeout": 124, "oom": 137, "cancelled": 130}
"""Exit codes of `tako-vm run` for jobs that did not end with an exit code of their own."""
TERMINAL = frozenset({"succeeded", "failed", "timeout", "oom", "cancelled"})
INSTALL_HINT = "pip install -e '.[{extra}]' in a clone of the repository (or: make server)"
"""How to get a server-side extra: the package is installed from the repository, not from PyPI."""

Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]


class Subparsers(Protocol):
    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def client_for(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def import_extra(module: str, what: str, extra: str) -> Any:
    """Import a server-side module; if its dependencies are missing say which extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise CommandError(f"{what} is not available in this installation ({module} is missing)") from exc
        raise CommandError(
            f"{what} needs the '{extra}' extra ({exc.name} is not installed): "
            + INSTALL_HINT.format(extra=extra)
        ) from exc


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


def print_json(data: Any, out: TextIO) -> None:
    print(json.dumps(data, indent=2, sort_keys=True), file=out)
