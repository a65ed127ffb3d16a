"""Process entry: load and validate settings, bind the port, lock the data dir, start the backend, serve.

Start-up is ordered so that a server that cannot run touches nothing: the port is bound (and listened
on) first, then the data dir is locked (local backend), and only then does the backend start (which
reaps what a crashed predecessor left in the data dir). Each failure is one line on stderr and an exit
status of its own (docs/cli.md); "listening on" is printed once the server is really serving.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from pathlib import Path

from aiohttp import web

from tako_shim.backends import make_backend
from tako_shim.config import ConfigError, Settings, load_settings
from tako_shim.errors import BackendStartError
from tako_shim.http.app import create_app
from tako_shim.http.serving import install_log_rate_limit, serve
from tako_shim.logsetup import LogFormat, configure_logging

log = logging.getLogger("tako_shim.server")

EXIT_CONFIG = 2  # invalid configuration (names the key)
EXIT_BACKEND = 3  # the backend cannot start (e.g. no usable runsc or cgroup controller in strict mode)
EXIT_PORT = 4  # the address cannot be bound: the port is in use (or the host is not this machine's)
EXIT_DATA_DIR_LOCKED = 5  # another server holds the data dir
PORT_HINT = (
    "choose another with --port, TAKO_VM_SERVER_PORT or server_port in tako_vm.yaml (make server PORT=...)"
)


class CannotListen(Exception):
    """The address cannot be bound; the one-line message says why and how to choose another."""


def build_settings(
    config_path: str | None,
    backend: str | None,
    host: str | None,
    port: int | None,
    data_dir: str | None = None,
) -> Settings:
    """The file and environment, then the command-line flags on top; validated once (``ConfigError``)."""
    return load_settings(
        config_path,
        overrides={"backend": backend, "server_host": host, "server_port": port, "data_dir": data_dir},
    )


def bind_sockets(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Bound, listening sockets for every address of ``host`` (port 0: one free port for all of them).

    Listening at once holds the port through the backend's start-up; connections wait in the backlog."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does (TIME_WAIT is fine)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(f"port {port} on {host} is in use (another server?); {PORT_HINT}") from None
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {PORT_HINT}") from None
    return sockets


def _say(message: str) -> None:
    """A life-cycle line on stderr, and in the log too when the log goes to a file."""
    print(f"tako-vm server: {message}", file=sys.stderr, flush=True)
    if any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers):
        log.info("%s", message)


def _fail(message: str, status: int) -> SystemExit:
    print(f"tako-vm server: {message}", file=sys.stderr, flush=True)
    return SystemExit(status)


def run_server(
    config_path: str | None,
    backend: str | None,
    host: str | None,
    port: int | None,
    data_dir: str | None = None,
    *,
    log_format: LogFormat = "text",
    log_file: str | None = None,
) -> None:
    """Blocking: serve the REST API until SIGINT/SIGTERM. Exit statuses: the ``EXIT_*`` constants."""
    try:
        settings = build_settings(config_path, backend, host, port, data_dir)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    try:
        configure_logging(settings.log_level, log_format, log_file)
    except OSError as exc:
        raise _fail(f"--log-file {log_file}: {exc.strerror or exc}", EXIT_CONFIG) from None
    install_log_rate_limit()
    try:
        sockets = bind_sockets(settings.server_host, settings.server_port)
    except CannotListen as exc:
        raise _fail(str(exc), EXIT_PORT) from None
    lock = None
    try:
        if settings.backend == "local":
            from tako_shim.backends.local.datadir import DataDirLock, DataDirLocked

            lock = DataDirLock(Path(settings.data_dir))
            try:
                lock.acquire()
            except DataDirLocked as exc:
                raise _fail(str(exc), EXIT_DATA_DIR_LOCKED) from None
            except OSError as exc:
                raise _fail(
                    f"cannot lock the data dir {settings.data_dir}: {exc.strerror or exc}", EXIT_CONFIG
                ) from None
        try:
            app = create_app(settings, make_backend(settings))
        except ConfigError as exc:
            raise _fail(str(exc), EXIT_CONFIG) from None
        bound = sockets[0].getsockname()

        async def announce(_: web.Application) -> None:  # runs after the backend has started
            _say(
                f"backend={settings.backend} listening on http://{settings.server_host}:{bound[1]}"
                f" (auth {'on' if settings.api_auth_enabled else 'off'})"
            )

        async def farewell(_: web.Application) -> None:  # runs once the backend has stopped
            _say(f"stopped (was listening on http://{settings.server_host}:{bound[1]})")

        app.on_startup.append(announce)
        app.on_cleanup.append(farewell)
        try:
            asyncio.run(serve(app, settings, sockets))
        except BackendStartError as exc:
            raise _fail(f"cannot start the {settings.backend} backend: {exc}", EXIT_BACKEND) from None
    finally:
        for sock in sockets:
            sock.close()
        if lock is not None:
            lock.release()
