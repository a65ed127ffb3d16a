"""The operator benchmark's emulator shortcut (bench/operator_bench.py `_fast_harness`): looking an
object up by its key must answer exactly what kmock's full scan answers (the bench measures the operator,
so the emulator must not change behaviour, only speed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kmock
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is a top-level directory, not an installed package

from bench.operator_bench import _fast_harness, _job  # noqa: E402
from kube_harness import KubeHarness  # noqa: E402


def _exercise(kube: KubeHarness) -> list[object]:
    """The same requests against either emulator; returns every answer, timestamps stripped."""
    answers: list[object] = []
    for n in range(5):
        kube.create("pythonjobs", _job(f"j{n}"))
    kube.create("configmaps", {"metadata": {"name": "j1"}, "data": {"k": "v"}})
    kube.create("pythonjobs", _job("elsewhere"), namespace="other")
    answers.append(kube.get("pythonjobs", "j3", namespace=kube.namespace)["spec"])  # type: ignore[index]
    answers.append(kube.get("configmaps", "j1", namespace=kube.namespace)["data"])  # type: ignore[index]
    answers.append(kube.get("pythonjobs", "missing"))  # a miss: kmock's own scan, 404
    answers.append(kube.get("pythonjobs", "elsewhere"))  # same name, other namespace only: 404
    answers.append(kube.get("pythonjobs", "elsewhere", namespace="other")["metadata"]["name"])  # type: ignore[index]
    kube.patch("pythonjobs", "j2", {"spec": {"cancel": True}})
    answers.append(kube.get("pythonjobs", "j2")["spec"]["cancel"])  # type: ignore[index]
    answers.append(kube.delete("pythonjobs", "j4"))
    answers.append(kube.get("pythonjobs", "j4"))
    answers.append(sorted(item["metadata"]["name"] for item in kube.list("pythonjobs")))
    return answers


def test_key_lookup_answers_like_kmocks_scan() -> None:
    with KubeHarness(namespace="bench") as plain:
        expected = _exercise(plain)
    with _fast_harness("bench") as fast:
        assert _exercise(fast) == expected
    assert expected[2] is None and expected[3] is None and expected[-1] == ["j0", "j1", "j2", "j3"]


def test_reads_of_existing_objects_skip_the_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the shortcut: a GET/PATCH of a stored object no longer walks every stored object
    (O(objects) per request in kmock 0.8); only misses and lists still do."""
    scans: list[str | None] = []
    original = kmock.KubernetesEmulator._KubernetesEmulator__get_objs  # type: ignore[attr-defined]

    def counting_scan(self: object, request: Any, strict: bool) -> Any:
        scans.append(request.name)
        return original(self, request, strict)

    monkeypatch.setattr(kmock.KubernetesEmulator, "_KubernetesEmulator__get_objs", counting_scan)
    with _fast_harness("bench") as fast:
        for n in range(20):
            fast.create("configmaps", {"metadata": {"name": f"c{n}"}})
        scans.clear()
        for n in range(20):
            assert fast.get("configmaps", f"c{n}") is not None
            fast.patch("configmaps", f"c{n}", {"data": {"n": str(n)}})
        assert scans == []
        assert fast.get("configmaps", "nope") is None
        assert scans == ["nope"]
