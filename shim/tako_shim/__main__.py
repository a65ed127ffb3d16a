"""``python -m tako_shim [--config FILE] [--backend B] [--host H] [--port P] [--data-dir D]``."""

from __future__ import annotations

import argparse

from tako_shim.server import run_server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tako_shim", description="Tako VM REST server")
    parser.add_argument(
        "--config", "-c", help="path to tako_vm.yaml (default: $TAKO_VM_CONFIG or ./tako_vm.yaml)"
    )
    parser.add_argument("--backend", choices=["local", "kubernetes"])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--data-dir", help="state directory (default: data_dir in the config, ~/.tako_vm)")
    args = parser.parse_args(argv)
    run_server(args.config, args.backend, args.host, args.port, args.data_dir)


if __name__ == "__main__":
    main()
