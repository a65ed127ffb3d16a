"""The `tako-vm` command."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("tako-vm: not implemented yet", file=sys.stderr)
    return 2
