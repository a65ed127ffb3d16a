"""Process entry: load and validate settings, build the backend, serve until interrupted."""

from __future__ import annotations

import asyncio
import logging
import sys

from tako_shim.app import create_app
from tako_shim.backends import make_backend
from tako_shim.config import ConfigError, Settings, load_settings
from tako_shim.errors import BackendStartError
from tako_shim.serving import install_log_rate_limit, serve


def build_settings(
    config_path: str | None, backend: str | None, host: str | None, port: int | None
) -> Settings:
    """The file and environment, then the command-line flags on top; validated once (``ConfigError``)."""
    return load_settings(
        config_path, overrides={"backend": backend, "server_host": host, "server_port": port}
    )


def run_server(config_path: str | None, backend: str | None, host: str | None, port: int | None) -> None:
    """Blocking: serve the REST API until SIGINT/SIGTERM. Exits with status 2 on invalid configuration."""
    try:
        settings = build_settings(config_path, backend, host, port)
    except ConfigError as exc:
        print(f"tako-vm server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    install_log_rate_limit()
    try:
        app = create_app(settings, make_backend(settings))
    except ConfigError as exc:
        print(f"tako-vm server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"tako-vm server: backend={settings.backend} listening on http://{settings.server_host}:{settings.server_port}"
        f" (auth {'on' if settings.api_auth_enabled else 'off'})",
        file=sys.stderr,
        flush=True,
    )
    try:
        asyncio.run(serve(app, settings, settings.server_host, settings.server_port))
    except BackendStartError as exc:
        print(f"tako-vm server: cannot start the {settings.backend} backend: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
