"""Fixtures for operator integration tests: the kmock emulator, the real operator (kopf) in a
thread, and a fake kubelet (helpers in operator_support.py). tests/nodeagent/ runs Pods in real runsc.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kube_harness import KubeHarness
from operator_support import FakeKubelet, OperatorThread, operator_options


@pytest.fixture
def kube() -> Iterator[KubeHarness]:
    with KubeHarness() as harness:
        yield harness


@pytest.fixture
def run_operator(kube: KubeHarness, tmp_path: Path) -> Iterator[Any]:
    """Factory: start an operator against `kube` with option overrides; stopped at teardown."""
    started: list[OperatorThread] = []

    def start(**overrides: Any) -> OperatorThread:
        op = OperatorThread(operator_options(kube, tmp_path, **overrides)).start()
        started.append(op)
        return op

    yield start
    for op in started:
        if op.thread.is_alive():
            op.stop()


@pytest.fixture
def kubelet(kube: KubeHarness) -> FakeKubelet:
    return FakeKubelet(kube)
