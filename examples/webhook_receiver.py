"""A small receiver for Tako VM completion webhooks (stdlib HTTP server + `tako_vm.webhooks.verify`).

    TAKO_VM_WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 9000

Submit with `webhook_url="http://<this host>:9000/tako"` (the server refuses private addresses unless its
`webhook_allowlist` permits them). Each verified delivery is printed once: retries carry the same
`webhook-id`, so a repeat is acknowledged (200) and skipped. A body whose signature does not verify gets
401 and is never processed.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tako_vm import webhooks

MAX_BODY_BYTES = 16 * 1024 * 1024

# (payload, headers) -> HTTP status to answer; the default accepts every new delivery.
Handle = Callable[[dict[str, Any], Mapping[str, str]], int]


class WebhookReceiver(ThreadingHTTPServer):
    """Verifies each POST, answers 401 to forgeries, calls ``handle`` once per ``webhook-id`` that it
    accepted (2xx): a delivery is processed once even when the sender retries it."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], secret: str, handle: Handle | None = None) -> None:
        super().__init__(address, _Handler)
        self.secret = secret
        self.handle: Handle = handle or (lambda payload, headers: 200)
        self.accepted: dict[str, dict[str, Any]] = {}  # webhook-id -> payload
        self.attempts: list[tuple[dict[str, str], bytes]] = []  # every POST as received
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: WebhookReceiver

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._answer(413)
            return
        body = self.rfile.read(length)
        headers = {key.lower(): value for key, value in self.headers.items()}
        with self.server.lock:
            self.server.attempts.append((headers, body))
        try:
            payload = webhooks.verify(body, headers, self.server.secret)
        except webhooks.WebhookVerificationError:
            self._answer(401)
            return
        webhook_id = headers["webhook-id"]
        with self.server.lock:
            if webhook_id in self.server.accepted:
                self._answer(200)  # a retry of a delivery we already processed
                return
            status = self.server.handle(payload, headers)
            if 200 <= status < 300:
                self.server.accepted[webhook_id] = payload
        self._answer(status)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secret = os.environ["TAKO_VM_WEBHOOK_SECRET"]

    def show(payload: dict[str, Any], headers: Mapping[str, str]) -> int:
        record = payload["data"]
        print(json.dumps({"job": record["execution_id"], "status": record["status"]}), flush=True)
        return 200

    with WebhookReceiver((args.host, args.port), secret, show) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
