"""A real webhook receiver on loopback for the webhook tests of both backends (tests/integration/
test_webhooks.py, test_operator_webhooks.py): examples/webhook_receiver.py, stoppable and restartable on
the same port."""

from __future__ import annotations

import base64
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tako_vm.testing import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from webhook_receiver import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


class Receiver:
    """A receiver on a fixed loopback port that can be stopped and started again (same port)."""

    def __init__(self, handle: Callable[[dict[str, Any], Mapping[str, str]], int] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.handle = handle
        self.server: WebhookReceiver | None = None
        self.history: list[tuple[dict[str, str], bytes]] = []

    def start(self) -> Receiver:
        self.server = WebhookReceiver(("127.0.0.1", self.port), SECRET, self.handle)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.history += self.server.attempts
            self.server = None

    def attempts(self) -> list[tuple[dict[str, str], bytes]]:
        return self.history + (self.server.attempts if self.server else [])
