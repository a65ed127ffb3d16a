"""Shell completion of `tako-vm` through argcomplete: `tako-vm completion bash|zsh|fish` prints the
script to source, e.g. ``eval "$(tako-vm completion bash)"`` in ~/.bashrc."""

from __future__ import annotations

import argparse
from typing import TextIO

from tako_vm.cli._common import CommandError, Subparsers

SHELLS = ("bash", "zsh", "fish")


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request from the shell (and exit) when one is being made; else nothing."""
    try:
        import argcomplete
    except ModuleNotFoundError:  # an install without it still runs every command
        return
    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        import argcomplete
    except ModuleNotFoundError as exc:
        raise CommandError("shell completion needs argcomplete: pip install argcomplete") from exc
    out.write(argcomplete.shellcode(["tako-vm"], shell=args.shell))
    return 0


def register(commands: Subparsers, client_opts: argparse.ArgumentParser) -> None:
    completion = commands.add_parser(
        "completion", help='print a shell completion script: eval "$(tako-vm completion bash)"'
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(handler=cmd_completion)
