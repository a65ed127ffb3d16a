"""Start a real `tako-vm` server process for tests: `with local_server(tmp_path) as server: ...`.

The server runs as a separate process (`python -m tako_shim`) with a configuration written to
`data_dir/tako_vm.yaml`; its output goes to `data_dir/server.log`. This module only spawns the
process and talks HTTP to it, so it needs the server extra installed but never imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class LocalServer:
    url: str
    port: int
    data_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path, deadline: float) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"tako-vm server exited with {process.returncode} while starting:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        try:
            response = httpx.get(f"{url}/health", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(0.1)
    raise RuntimeError(
        f"tako-vm server not healthy at {url} in time ({last}):\n" + log_path.read_text()[-4000:]
    )


@contextlib.contextmanager
def local_server(
    data_dir: Path,
    settings: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 90.0,
    python: str = sys.executable,
    via_cli: bool = False,
) -> Iterator[LocalServer]:
    """Run a server with the local backend on a free loopback port until the block ends.

    `settings` are written as the config file (`data_dir` defaults to `data_dir / "state"`);
    `env` is added to this process's environment (e.g. a PATH with runsc on it). `via_cli`
    starts it as `tako-vm --config FILE server ...` instead of `python -m tako_shim`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"backend": "local", "data_dir": str(data_dir / "state"), **(settings or {})}
    config_path = data_dir / "tako_vm.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log_path = data_dir / "server.log"
    child_env = {key: value for key, value in os.environ.items() if not key.startswith("TAKO_VM_")}
    child_env.update(env or {})
    command = [
        python,
        "-m",
        "tako_shim",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log_path, time.monotonic() + startup_timeout)
        yield LocalServer(url, port, data_dir, config_path, log_path, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
