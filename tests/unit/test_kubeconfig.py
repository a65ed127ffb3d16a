"""The shared Kubernetes configuration loader (tako_vm.kubeconfig): $KUBECONFIG lists merged as kubectl
merges them, exec credential plugins (a real executable script), and which configuration wins."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tako_vm import kubeconfig
from tako_vm.kubeconfig import BearerToken, KubeConfigError, load_connection, load_kubeconfig


def write_config(path: Path, **config: Any) -> Path:
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", **config}))  # JSON is YAML
    return path


def cluster(name: str, server: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "cluster": {"server": server, **extra}}


def context(name: str, cluster_name: str, user: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "context": {"cluster": cluster_name, "user": user, **extra}}


# -- $KUBECONFIG lists ---------------------------------------------------------------------------------


def test_a_kubeconfig_list_is_merged_first_definition_wins(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_config(
        tmp_path / "a" / "config",
        clusters=[cluster("shared", "https://first.example:6443", **{"certificate-authority": "ca.crt"})],
        users=[{"name": "me", "user": {"token": "first-token"}}],
    )
    second = write_config(
        tmp_path / "b" / "config",
        **{"current-context": "dev"},
        clusters=[cluster("shared", "https://second.example:6443"), cluster("other", "https://o:6443")],
        users=[{"name": "me", "user": {"token": "second-token"}}, {"name": "ci", "user": {"tokenFile": "t"}}],
        contexts=[context("dev", "shared", "me", namespace="team-a"), context("ci", "other", "ci")],
    )
    (tmp_path / "b" / "t").write_text("from-file\n")
    merged = load_kubeconfig([str(first), str(tmp_path / "missing"), str(second)])
    # the current context comes from the only file that sets it; the cluster and user from the first
    assert merged.server == "https://first.example:6443" and merged.token == "first-token"
    assert merged.ca_path == str(tmp_path / "a" / "ca.crt"), "relative to the file that defined it"
    assert merged.default_namespace == "team-a"
    ci = load_kubeconfig([str(first), str(second)], context="ci")
    assert ci.server == "https://o:6443" and ci.token == "from-file"
    assert ci.token_path == str(tmp_path / "b" / "t")
    assert not BearerToken(ci).due(), "a token file is read on the loop: no plugin to wait for"


def test_load_connection_reads_every_file_of_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = write_config(tmp_path / "users", users=[{"name": "me", "user": {"token": "tok"}}])
    clusters = write_config(
        tmp_path / "clusters",
        **{"current-context": "c"},
        clusters=[cluster("k", "http://127.0.0.1:6443")],
        contexts=[context("c", "k", "me")],
    )
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(users), str(clusters)]))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # a named kubeconfig wins, as in kubectl
    connection = load_connection()
    assert connection.server == "http://127.0.0.1:6443" and connection.token == "tok"
    with pytest.raises(KubeConfigError, match="needs KUBERNETES_SERVICE_HOST and _PORT"):
        load_connection(in_cluster=True)  # asked for explicitly: no kubeconfig fallback


def test_a_single_missing_kubeconfig_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"cannot read kubeconfig .*nowhere"):
        load_kubeconfig(str(tmp_path / "nowhere"))


# -- exec credential plugins ------------------------------------------------------------------------


def plugin(tmp_path: Path, body: str) -> Path:
    """An executable credential plugin: a Python script; it counts its runs in `runs`."""
    script = tmp_path / "get-token"
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys, time\n"
        f"open({str(tmp_path / 'runs')!r}, 'a').write('x')\n" + body
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def exec_config(tmp_path: Path, command: str, **extra: Any) -> Path:
    spec = {"apiVersion": "client.authentication.k8s.io/v1", "command": command, **extra}
    return write_config(
        tmp_path / "config",
        **{"current-context": "c"},
        clusters=[cluster("k", "https://eks.example")],
        users=[{"name": "u", "user": {"exec": spec}}],
        contexts=[context("c", "k", "u")],
    )


def runs(tmp_path: Path) -> int:
    return len((tmp_path / "runs").read_text()) if (tmp_path / "runs").exists() else 0


def test_an_exec_plugin_gives_the_token_and_sees_its_env_and_exec_info(tmp_path: Path) -> None:
    plugin(
        tmp_path,
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['kind'] == 'ExecCredential' and info['spec']['interactive'] is False, info\n"
        "token = os.environ['CLUSTER'] + '-' + sys.argv[1]\n"
        "print(json.dumps({'kind': 'ExecCredential', 'status': {'token': token}}))\n",
    )
    # a relative command with a slash is relative to the kubeconfig's directory
    path = exec_config(tmp_path, "./get-token", args=["arg1"], env=[{"name": "CLUSTER", "value": "prod"}])
    connection = load_kubeconfig(str(path))
    assert connection.exec_plugin is not None and runs(tmp_path) == 0, "run on use, not on load"
    token = BearerToken(connection)
    assert token.get() == "prod-arg1" and token.get() == "prod-arg1"
    assert runs(tmp_path) == 1, "cached: no expiry given, so for TOKEN_REREAD_SECONDS"
    assert connection.current_token() == "prod-arg1" and runs(tmp_path) == 2, "a re-login runs it afresh"


def test_an_exec_token_is_renewed_before_it_expires(tmp_path: Path) -> None:
    plugin(
        tmp_path,
        "n = len(open(sys.argv[1]).read())\n"
        "expires = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + float(sys.argv[2])))\n"
        "print(json.dumps({'status': {'token': f't{n}', 'expirationTimestamp': expires}}))\n",
    )
    path = exec_config(tmp_path, str(tmp_path / "get-token"), args=[str(tmp_path / "runs"), "3600"])
    connection = load_kubeconfig(str(path))
    token = BearerToken(connection)
    assert token.due(), "async callers run the first get in a thread"
    assert token.get() == "t1" and token.get() == "t1" and runs(tmp_path) == 1
    assert not token.due()
    assert token.valid_until > time.monotonic() + 3000, "valid until shortly before it expires"
    token.valid_until = time.monotonic() - 1  # the renewal time has come
    assert token.due() and token.get() == "t2"
    fresh, expiration = connection.current_credentials()  # what kopf's login handler passes on
    assert fresh == "t3" and expiration is not None
    assert 3500 < expiration.timestamp() - time.time() <= 3600

    soon = exec_config(tmp_path, str(tmp_path / "get-token"), args=[str(tmp_path / "runs"), "30"])
    short = BearerToken(load_kubeconfig(str(soon)))
    assert short.get() == "t4" and short.get() == "t5", "expiring within the margin: run every time"


@pytest.mark.parametrize(
    "output, message",
    [
        ("print('not json')", "printed no ExecCredential JSON"),
        ("print(json.dumps({'status': {}}))", "returned no token"),
        (
            "print(json.dumps({'status': {'clientCertificateData': 'x', 'clientKeyData': 'y'}}))",
            "returned a client certificate, which is not supported",
        ),
        ("sys.stderr.write('login required'); sys.exit(3)", "exited 3: login required"),
    ],
)
def test_a_failing_exec_plugin_is_a_clear_error(tmp_path: Path, output: str, message: str) -> None:
    plugin(tmp_path, output + "\n")
    connection = load_kubeconfig(str(exec_config(tmp_path, str(tmp_path / "get-token"))))
    with pytest.raises(KubeConfigError, match=message):
        BearerToken(connection).get()


def test_a_missing_exec_command_names_its_install_hint(tmp_path: Path) -> None:
    path = exec_config(tmp_path, "no-such-plugin-anywhere", installHint="install it with: apt-get install x")
    with pytest.raises(KubeConfigError, match=r"no-such-plugin-anywhere.*apt-get install x"):
        BearerToken(load_kubeconfig(str(path))).get()


def test_an_unknown_exec_api_version_is_refused_at_load(tmp_path: Path) -> None:
    path = exec_config(tmp_path, "x", apiVersion="client.authentication.k8s.io/v1alpha1")
    with pytest.raises(KubeConfigError, match=r"exec apiVersion .*v1alpha1.* is not supported"):
        load_kubeconfig(str(path))


def test_the_module_needs_no_kubernetes_client() -> None:
    source = Path(kubeconfig.__file__).read_text()
    assert "import kubernetes" not in source and "from kubernetes" not in source
