"""The kubernetes backend's plumbing that kmock cannot exercise: watch recovery and in-cluster config.

kmock never answers 410 Gone, never ends a watch stream and never fails mid-stream, so the shared
watch's recovery is driven here by a scripted event source (a stand-in for the API, and only for
these failure modes; tests/integration/test_shim_kubernetes.py runs the watch against kmock).
The in-cluster configuration is read from a fake service-account directory with a real CA file.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tako_shim.backends.kubernetes import api as kubernetes_api
from tako_shim.backends.kubernetes.api import KubeApiError, WatchExpired
from tako_shim.backends.kubernetes.watch import JobWatch
from tako_shim.config import KubernetesOptions


def job(name: str, phase: str | None, version: str) -> dict[str, Any]:
    status = {"phase": phase} if phase else {}
    return {"metadata": {"name": name, "resourceVersion": version}, "status": status}


class ScriptedSource:
    """Plays one script per watch request: a list of events, then an optional exception."""

    def __init__(self, scripts: list[tuple[list[dict[str, Any]], Exception | None]]) -> None:
        self.scripts = scripts
        self.requests: list[str | None] = []
        self.idle = asyncio.Event()

    async def watch_jobs(self, namespace: str, resource_version: str | None) -> AsyncIterator[dict[str, Any]]:
        self.requests.append(resource_version)
        if not self.scripts:
            self.idle.set()
            await asyncio.Event().wait()  # a quiet, open stream
        events, failure = self.scripts.pop(0)
        for event in events:
            await asyncio.sleep(0)
            yield event
        if failure is not None:
            raise failure


async def no_sleep(seconds: float) -> None:
    sleeps.append(seconds)
    await asyncio.sleep(0)


sleeps: list[float] = []


async def test_gone_relists_errors_back_off_and_a_completion_during_the_gap_still_wakes() -> None:
    sleeps.clear()
    source = ScriptedSource(
        [
            ([{"type": "ADDED", "object": job("j", "Running", "5")}], WatchExpired("too old")),
            ([], KubeApiError(0, "Unreachable", "connection reset")),
            ([], KubeApiError(500, "InternalError", "etcd")),
            # the fresh start replays current state: the job finished while we were away
            ([{"type": "ADDED", "object": job("j", "Succeeded", "9")}], None),
        ]
    )
    watch = JobWatch(source, sleep=no_sleep)
    async with watch.subscribe("ns", "j") as sub:
        while not (sub.latest and sub.latest["status"].get("phase") == "Succeeded"):
            assert await sub.next_change(5), "the waiter was never woken"
    await asyncio.wait_for(source.idle.wait(), 5)
    stats = watch.stats["ns"]
    assert stats.restarts_after_gone == 1 and stats.errors == 2
    assert source.requests[:4] == [None, None, None, None], "after 410 or an error: start over (re-list)"
    assert source.requests[4] == "9", "after a stream the server ended: resume from the last version"
    assert sleeps[:2] == [0.2, 0.4], "errors back off exponentially; 410 retries at once"
    await watch.close()


async def test_one_stream_serves_many_waiters_and_deletion_is_reported() -> None:
    source = ScriptedSource([([{"type": "DELETED", "object": job("a", "Running", "3")}], None)])
    watch = JobWatch(source, sleep=no_sleep)
    async with watch.subscribe("ns", "a") as first, watch.subscribe("ns", "a") as second:
        assert watch.waiter_count() == 2
        assert await first.next_change(5) or first.deleted
        assert first.deleted and second.deleted and second.latest is None
    assert watch.waiter_count() == 0 and watch.stats["ns"].streams_opened <= 2
    await watch.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a CA certificate")
def test_in_cluster_configuration_reads_the_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tako_vm import kubeconfig

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=test-ca", "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)),
        ],
        check=True,
        capture_output=True,
    )
    token.write_text("sa-token-1")
    monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_DIR", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.delenv("KUBECONFIG", raising=False)

    connection = kubernetes_api._load_connection(KubernetesOptions())
    assert connection.server == "https://10.0.0.1:443"
    assert (connection.authorization() or "").lower() == "bearer sa-token-1"
    assert connection.ssl is not False, "TLS verified against the service account's CA"


def test_a_kubeconfig_wins_over_the_in_cluster_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "c",'
        ' "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:6443"}}],'
        ' "users": [{"name": "u", "user": {"token": "kc-token"}}],'
        ' "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}'
    )
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBECONFIG", str(config))
    connection = kubernetes_api._load_connection(KubernetesOptions())
    assert connection.server == "http://127.0.0.1:6443" and connection.ssl is False
    assert connection.authorization() == "Bearer kc-token"


def test_the_shim_takes_its_token_from_an_exec_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "get-token"
    plugin.write_text(
        f"#!{sys.executable}\nimport json\nprint(json.dumps({{'status': {{'token': 'exec-token'}}}}))\n"
    )
    plugin.chmod(0o755)
    config = tmp_path / "kubeconfig"
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}}
    config.write_text(
        json.dumps(
            {
                "current-context": "c",
                "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    connection = kubernetes_api._load_connection(KubernetesOptions(kubeconfig=str(config)))
    assert connection.authorization() == "Bearer exec-token"
