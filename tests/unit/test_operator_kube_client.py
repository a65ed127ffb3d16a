"""The operator's own API client (operator/tako_operator/io/kube.py): configuration loading and error
mapping, against a real aiohttp server (plain HTTP, and TLS with a client certificate)."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tako_operator.io.kube import Kube, retryable
from tako_vm import kubeconfig as kube_module
from tako_vm.kubeconfig import Connection, KubeApiError, KubeConfigError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any], namespace: str = "ns1") -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [
                    {"name": "other", "context": {"cluster": "nope", "user": "nope"}},
                    {"name": "c", "context": {"cluster": "c", "user": "u", "namespace": namespace}},
                ],
                "current-context": "c",
            }
        )
    )
    return path


class Api:
    """A real HTTP server answering every request with `handler`; records (method, path, headers)."""

    def __init__(self, handler: Handler) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.handler = handler
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        return await self.handler(request)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Pod", "metadata": {"name": request.path.rsplit("/", 1)[-1]}})

    server = Api(ok)
    await server.server.start_server()
    yield server
    await server.server.close()


def status(code: int, reason: str, message: str = "nope") -> web.Response:
    body = {"kind": "Status", "status": "Failure", "reason": reason, "message": message, "code": code}
    return web.json_response(body, status=code)


# -- kubeconfig ---------------------------------------------------------------------------------------


async def test_a_token_kubeconfig_sends_the_token_and_names_the_namespace(api: Api, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", {"server": api.url}, {"token": "s3cret"}, namespace="team-a")
    connection = kube_module.load_kubeconfig(str(path))
    assert connection.server == api.url and connection.default_namespace == "team-a"
    kube = Kube(connection, concurrency=2)
    try:
        pod = await kube.get_pod("team-a", "p1")
    finally:
        await kube.close()
    assert pod == {"kind": "Pod", "metadata": {"name": "p1"}}
    ((method, path_qs, headers),) = api.seen
    assert (method, path_qs) == ("GET", "/api/v1/namespaces/team-a/pods/p1")
    assert headers["Authorization"] == "Bearer s3cret"


async def test_an_exec_plugin_kubeconfig_sends_the_plugins_token(api: Api, tmp_path: Path) -> None:
    """EKS/GKE/AKS-style credentials: the token comes from running the kubeconfig's exec plugin."""
    plugin = tmp_path / "get-token"
    plugin.write_text(
        f"#!{sys.executable}\nimport json\n"
        "print(json.dumps({'kind': 'ExecCredential', 'status': {'token': 'from-plugin'}}))\n"
    )
    plugin.chmod(0o755)
    spec = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(plugin)}
    connection = kube_module.load_kubeconfig(
        str(kubeconfig(tmp_path / "config", {"server": api.url}, {"exec": spec}))
    )
    kube = Kube(connection)
    try:
        await kube.get_pod("ns1", "p1")
    finally:
        await kube.close()
    assert [headers["Authorization"] for _m, _p, headers in api.seen] == ["Bearer from-plugin"]


@pytest.mark.parametrize(
    "user, field",
    [
        ({"auth-provider": {"name": "oidc"}}, "auth-provider"),
        ({"username": "admin", "password": "x"}, "username"),
    ],
)
def test_unsupported_credentials_are_refused_naming_the_field(
    tmp_path: Path, user: dict[str, Any], field: str
) -> None:
    path = kubeconfig(tmp_path / "config", {"server": "https://example.invalid"}, user)
    with pytest.raises(KubeConfigError, match=f"uses '{field}', which is not supported"):
        kube_module.load_kubeconfig(str(path))


def test_a_missing_context_or_server_is_a_clear_error(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", {}, {"token": "t"})
    with pytest.raises(KubeConfigError, match="cluster 'c' has no server"):
        kube_module.load_kubeconfig(str(path))
    with pytest.raises(KubeConfigError, match="no context named 'absent'"):
        kube_module.load_kubeconfig(str(path), context="absent")


def test_file_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    cluster = {"server": "https://k", "certificate-authority": "ca.crt", "insecure-skip-tls-verify": True}
    path = kubeconfig(tmp_path / "config", cluster, {"tokenFile": "token"})
    connection = kube_module.load_kubeconfig(str(path))
    assert connection.ca_path == str(tmp_path / "ca.crt") and connection.insecure is True
    assert connection.token == "from-file" and connection.token_path == str(tmp_path / "token")


def make_cert(directory: Path) -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM): the CA, the server's and the client's."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert.read_bytes(), key.read_bytes()


def contents(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


async def test_ca_and_client_certificate_data_authenticate_over_tls(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    peers: list[Any] = []

    async def who(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peercert") if request.transport else None)
        return web.json_response({"metadata": {"name": "job"}})

    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "cert.pem"))
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_tls.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
    api = Api(who)
    await api.server.start_server(ssl=server_tls)
    try:
        url = f"https://127.0.0.1:{api.server.port}"
        b64 = base64.b64encode
        cluster = {"server": url, "certificate-authority-data": b64(cert).decode()}
        user = {"client-certificate-data": b64(cert).decode(), "client-key-data": b64(key).decode()}
        connection = kube_module.load_kubeconfig(str(kubeconfig(tmp_path / "config", cluster, user)))
        assert contents(connection.cert_path) == cert and contents(connection.key_path) == key
        assert contents(connection.ca_path) == cert
        kube = Kube(connection)
        try:
            assert await kube.get_job("ns1", "job") == {"metadata": {"name": "job"}}
        finally:
            await kube.close()
        # without the CA the server's certificate is refused: a connection fault (status 0), retryable
        untrusting = Kube(dataclasses.replace(connection, ca_path=None))
        try:
            with pytest.raises(KubeApiError) as refused:
                await untrusting.get_job("ns1", "job")
        finally:
            await untrusting.close()
        # insecure-skip-tls-verify: the server is not verified, the client certificate still presented
        insecure = Kube(dataclasses.replace(connection, ca_path=None, insecure=True))
        try:
            assert await insecure.get_job("ns1", "job") == {"metadata": {"name": "job"}}
        finally:
            await insecure.close()
    finally:
        await api.server.close()
    assert refused.value.status == 0 and retryable(refused.value)
    assert len(peers) == 2
    for peer in peers:
        ((subject,),) = peer["subject"]
        assert subject == ("commonName", "127.0.0.1")


def test_invalid_base64_data_names_the_field(tmp_path: Path) -> None:
    cluster = {"server": "https://k", "certificate-authority-data": "not base64!"}
    with pytest.raises(KubeConfigError, match="certificate-authority-data is not valid base64"):
        kube_module.load_kubeconfig(str(kubeconfig(tmp_path / "config", cluster, {})))


# -- in-cluster ---------------------------------------------------------------------------------------


async def test_in_cluster_reads_the_service_account_and_rereads_a_rotated_token(
    api: Api, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "namespace").write_text("tako-system")
    (tmp_path / "ca.crt").write_text("unused here")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    connection = kube_module.load_incluster(env, str(tmp_path))
    assert connection.server == "https://10.0.0.1:443" and connection.default_namespace == "tako-system"
    assert connection.ca_path == str(tmp_path / "ca.crt") and connection.token == "first"
    ipv6 = kube_module.load_incluster({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, str(tmp_path))
    assert ipv6.server == "https://[fd00::1]:443"

    kube = Kube(dataclasses.replace(connection, server=api.url, ca_path=None))
    try:
        await kube.get_pod("tako-system", "a")
        (tmp_path / "token").write_text("second\n")  # the kubelet rotated it
        await kube.get_pod("tako-system", "b")  # within TOKEN_REREAD_SECONDS: the token read before
        kube.token.valid_until -= kube_module.TOKEN_REREAD_SECONDS  # the interval has passed
        await kube.get_pod("tako-system", "c")
    finally:
        await kube.close()
    tokens = [headers["Authorization"] for _method, _path, headers in api.seen]
    assert tokens == ["Bearer first", "Bearer first", "Bearer second"]
    assert connection.current_token() == "second"  # what kopf's login handler hands kopf on a re-login


def test_in_cluster_without_the_environment_or_token_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        kube_module.load_incluster({}, str(tmp_path))
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match="cannot read the token"):
        kube_module.load_incluster(env, str(tmp_path))


# -- errors -------------------------------------------------------------------------------------------


async def error_of(answer: web.Response) -> KubeApiError:
    """The error a GET raises when the server answers `answer`."""

    async def handler(request: web.Request) -> web.Response:
        return answer

    api = Api(handler)
    await api.server.start_server()
    kube = Kube(Connection(server=api.url))
    try:
        with pytest.raises(KubeApiError) as raised:
            await kube.request("GET", "/api/v1/namespaces/a/pods/b")
    finally:
        await kube.close()
        await api.server.close()
    return raised.value


@pytest.mark.parametrize(
    "code, reason, is_retryable",
    [(404, "NotFound", False), (409, "Conflict", True), (429, "TooManyRequests", True),
     (500, "InternalError", True), (403, "Forbidden", False), (422, "Invalid", False)],
)  # fmt: skip
async def test_error_answers_become_kube_api_errors(code: int, reason: str, is_retryable: bool) -> None:
    error = await error_of(status(code, reason, f"{code} says no"))
    assert (error.status, error.reason, error.message) == (code, reason, f"{code} says no")
    assert retryable(error) is is_retryable


async def test_a_non_status_error_body_keeps_the_http_reason_and_text() -> None:
    error = await error_of(web.Response(status=502, text="upstream down"))
    assert (error.status, error.reason, error.message) == (502, "Bad Gateway", "upstream down")
    assert retryable(error)


async def test_404_and_409_mean_gone_and_exists_as_before() -> None:
    """create: 409 AlreadyExists -> False; another 409 with the object absent is raised; delete/get/patch
    of a missing object -> False/None."""
    present = {"cm-exists"}

    async def answer(request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        if request.method == "POST":
            body = await request.json()
            if body["metadata"]["name"] == "pod-exists":
                return status(409, "AlreadyExists")
            return status(409, "Conflict", "try again")  # says nothing about existence: read it
        if name in present:
            return web.json_response({"metadata": {"name": name}})
        return status(404, "NotFound")

    api = Api(answer)
    await api.server.start_server()
    kube = Kube(Connection(server=api.url, token="t"))
    try:
        assert await kube.create_pod({"metadata": {"name": "pod-exists", "namespace": "a"}}) is False
        assert await kube.create_configmap({"metadata": {"name": "cm-exists", "namespace": "a"}}) is False
        with pytest.raises(KubeApiError) as conflict:
            await kube.create_network_policy({"metadata": {"name": "np-absent", "namespace": "a"}})
        assert await kube.delete_pod("a", "gone") is False
        assert await kube.get_job("a", "gone") is None
        assert await kube.patch_job_status("a", "gone", {"phase": "Running"}) is None
        assert await kube.merge_patch_pod("a", "gone", {"metadata": {"labels": {"x": None}}}) is None
        assert await kube.remove_pod_label("a", "gone-too", "x") is False
    finally:
        await kube.close()
        await api.server.close()
    assert conflict.value.status == 409 and conflict.value.reason == "Conflict" and retryable(conflict.value)
    requests = [(method, path) for method, path, _h in api.seen]
    assert ("GET", "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies/np-absent") in requests
    assert ("DELETE", "/api/v1/namespaces/a/pods/gone?gracePeriodSeconds=0") in requests
    content_types = {path: h.get("Content-Type") for method, path, h in api.seen if method == "PATCH"}
    assert content_types == {
        "/apis/takovm.dev/v1alpha1/namespaces/a/pythonjobs/gone/status": "application/merge-patch+json",
        "/api/v1/namespaces/a/pods/gone": "application/merge-patch+json",
        "/api/v1/namespaces/a/pods/gone-too": "application/strategic-merge-patch+json",
    }


async def test_a_refused_connection_is_a_retryable_status_0(tmp_path: Path) -> None:
    api = Api(lambda request: status(500, "x"))  # type: ignore[arg-type, return-value]
    await api.server.start_server()
    url = api.url
    await api.server.close()  # nothing listens there any more
    kube = Kube(Connection(server=url))
    try:
        with pytest.raises(KubeApiError) as raised:
            await kube.get_pod("a", "b")
    finally:
        await kube.close()
    assert raised.value.status == 0 and retryable(raised.value)


async def test_a_log_longer_than_asked_is_cut_client_side() -> None:
    async def flood(request: web.Request) -> web.Response:
        return web.Response(text="x" * 100_000)  # ignores limitBytes

    api = Api(flood)
    await api.server.start_server()
    kube = Kube(Connection(server=api.url))
    try:
        text = await kube.read_log("a", "p", "runner", 1000)
    finally:
        await kube.close()
        await api.server.close()
    assert text is not None and text.endswith("x" * 1000) and "x" * 1001 not in text
    assert [path.split("?")[1] for _m, path, _h in api.seen] == [
        "container=runner&tailLines=50&limitBytes=1001",
        "container=runner&tailLines=3&limitBytes=1001",
    ]


def test_the_operator_process_imports_neither_the_kubernetes_client_nor_urllib3() -> None:
    """`python -m tako_operator` keeps kopf from importing the official client (~38 MiB of modules)."""
    code = (
        "import sys, tako_operator.__main__; "
        "print('kopf' in sys.modules, sorted(m for m, mod in sys.modules.items() "
        "if m.split('.')[0] in ('kubernetes', 'urllib3') and mod is not None))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["True", "[]"]


def test_an_unreadable_client_certificate_fails_when_the_client_is_built(tmp_path: Path) -> None:
    (tmp_path / "bad.crt").write_text("not a certificate")
    user = {"client-certificate": "bad.crt", "client-key": "bad.crt"}
    connection = kube_module.load_kubeconfig(
        str(kubeconfig(tmp_path / "config", {"server": "https://k"}, user))
    )
    with pytest.raises(KubeConfigError, match=r"cannot load the TLS files .*bad\.crt"):
        Kube(connection)
    assert Kube(dataclasses.replace(connection, server="http://k")).tls is True  # plain HTTP: no TLS at all
