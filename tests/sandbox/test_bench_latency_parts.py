"""The latency benchmark's own pieces: interleaving and the executor-direct row (real runsc)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is a top-level directory, not an installed package

from bench.latency_parts import DirectExecutor, interleaved  # noqa: E402


def test_interleaved_calls_every_method_once_per_round_in_varying_order() -> None:
    calls: list[str] = []

    def method(name: str) -> int:
        calls.append(name)
        return len(calls)

    methods = {name: (lambda name=name: method(name)) for name in "abc"}
    samples = interleaved(methods, rounds=4)
    assert {name: len(values) for name, values in samples.items()} == {"a": 4, "b": 4, "c": 4}
    rounds = [tuple(calls[i : i + 3]) for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len(set(rounds)) > 1  # the order changes between rounds


def test_direct_executor_runs_print_1_in_a_sandbox(executor: object, tmp_path: Path) -> None:
    direct = DirectExecutor(tmp_path / "direct")
    try:
        assert 0 < direct.once() < 60
        assert direct.runs == 1
    finally:
        direct.close()
    assert not list((tmp_path / "direct" / "teardown").iterdir())  # close() waited for the teardown
