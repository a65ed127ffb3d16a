"""How the shim and the operator reach the Kubernetes API: one configuration loader and one error type.

`load_connection` gives a `Connection`: the in-cluster service account when `KUBERNETES_SERVICE_HOST`
is set and no kubeconfig is named (its token file is re-read: bound tokens rotate), otherwise the
kubeconfig named by the caller, `$KUBECONFIG` (every file of the list, merged as kubectl merges them:
the first file to define a name or the current context wins) or `~/.kube/config`.

Supported kubeconfig credentials: a token or tokenFile, a client certificate and key (files or -data),
the CA (file or -data), insecure-skip-tls-verify, and exec credential plugins
(`client.authentication.k8s.io` v1 and v1beta1, as EKS, GKE and AKS kubeconfigs use) that return a
token, re-run when it expires. Auth providers, basic auth and exec plugins that return a client
certificate are refused by name. `BearerToken` gives the current token for each request.

Pure stdlib plus PyYAML (imported when a kubeconfig is read); no Kubernetes client, no aiohttp.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REREAD_SECONDS = 60.0
EXEC_TIMEOUT_SECONDS = 60.0
EXEC_REFRESH_MARGIN_SECONDS = 60.0  # an exec token is renewed this long before it expires
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")

# kubeconfig user fields this loader cannot honour: refused by name rather than ignored.
UNSUPPORTED_USER_FIELDS = ("auth-provider", "username", "password")


class KubeApiError(Exception):
    """An API call that failed: the HTTP status (0: no answer, i.e. a connection fault or timeout), the
    Kubernetes Status' `reason` (or the HTTP reason phrase) and its message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeConfigError(ValueError):
    """A kubeconfig or in-cluster configuration this loader cannot use."""


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig user's `exec` block: a command that prints an ExecCredential."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = EXEC_API_VERSIONS[0]
    base_dir: str = "."  # a relative command is resolved against the kubeconfig's directory
    install_hint: str = ""

    def run(self) -> tuple[str, float | None]:
        """The plugin's token and when it expires (epoch seconds; None: it does not say)."""
        command = self.command
        if os.sep in command and not os.path.isabs(command):
            command = os.path.join(self.base_dir, command)
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        env = {**os.environ, **dict(self.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
        try:
            out = subprocess.run(
                [command, *self.args], env=env, capture_output=True, stdin=subprocess.DEVNULL,
                timeout=EXEC_TIMEOUT_SECONDS, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            hint = f" ({self.install_hint.strip()})" if self.install_hint.strip() else ""
            raise KubeConfigError(f"exec credential plugin {self.command!r} failed: {exc}{hint}") from exc
        if out.returncode != 0:
            detail = out.stderr.decode("utf-8", "replace").strip()[-300:]
            raise KubeConfigError(
                f"exec credential plugin {self.command!r} exited {out.returncode}: {detail}"
            )
        return parse_exec_credential(self.command, out.stdout)


def parse_exec_credential(command: str, output: bytes) -> tuple[str, float | None]:
    """(token, expiry as epoch seconds or None) from an ExecCredential printed by `command`."""
    try:
        status = json.loads(output).get("status") or {}
    except (ValueError, AttributeError) as exc:
        raise KubeConfigError(f"exec credential plugin {command!r} printed no ExecCredential JSON") from exc
    if status.get("clientCertificateData") or status.get("clientKeyData"):
        raise KubeConfigError(
            f"exec credential plugin {command!r} returned a client certificate, which is not supported "
            "(only tokens are)"
        )
    token = status.get("token")
    if not isinstance(token, str) or not token:
        raise KubeConfigError(f"exec credential plugin {command!r} returned no token")
    expires = status.get("expirationTimestamp")
    if not expires:
        return token, None
    try:
        moment = datetime.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
    except ValueError as exc:
        raise KubeConfigError(f"exec credential plugin {command!r}: bad expirationTimestamp") from exc
    return token, moment.timestamp()


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate (also handed to kopf's own client)."""

    server: str
    ca_path: str | None = None
    insecure: bool = False
    token: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    default_namespace: str | None = None
    token_path: str | None = None  # re-read every TOKEN_REREAD_SECONDS (in-cluster, tokenFile)
    exec_plugin: ExecPlugin | None = None

    def current_token(self) -> str | None:
        """The token as it is now: a fresh run of the exec plugin, the token file as it holds it now (a
        rotated service account token), else `token`."""
        return self.current_credentials()[0]

    def current_credentials(self) -> tuple[str | None, datetime.datetime | None]:
        """`current_token()` and when it expires (only an exec plugin says; None: not known)."""
        if self.exec_plugin is not None:
            token, expires = self.exec_plugin.run()
            when = None if expires is None else datetime.datetime.fromtimestamp(expires, datetime.UTC)
            return token, when
        if self.token_path:
            with contextlib.suppress(OSError):
                return Path(self.token_path).read_text().strip() or self.token, None
        return self.token, None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings: the CA (else the system's), the client certificate; `insecure` turns
        verification of the server off but still presents the client certificate."""
        try:
            context = ssl.create_default_context(cafile=None if self.insecure else self.ca_path)
            if self.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.cert_path and self.key_path:
                context.load_cert_chain(self.cert_path, self.key_path)
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f for f in (self.ca_path, self.cert_path, self.key_path) if f)
            raise KubeConfigError(f"cannot load the TLS files ({files}): {exc}") from exc
        return context


@dataclass
class BearerToken:
    """The token for the next request: a token file re-read at most every TOKEN_REREAD_SECONDS, an
    exec plugin re-run shortly before its token expires (or every TOKEN_REREAD_SECONDS if it does not
    say), else the fixed token. Blocking only when a file is read or a plugin runs (`due`)."""

    connection: Connection
    value: str | None = None
    valid_until: float = field(default=-float("inf"))  # time.monotonic()

    def due(self) -> bool:
        """Whether the next `get` runs the exec plugin (async callers run that `get` in a thread)."""
        return self.connection.exec_plugin is not None and time.monotonic() >= self.valid_until

    def get(self) -> str | None:
        now = time.monotonic()
        plugin = self.connection.exec_plugin
        if plugin is None and self.connection.token_path is None:
            return self.connection.token
        if now < self.valid_until:
            return self.value
        if plugin is not None:
            self.value, expires = plugin.run()
            lifetime = (
                TOKEN_REREAD_SECONDS
                if expires is None
                else expires - time.time() - EXEC_REFRESH_MARGIN_SECONDS
            )
            self.valid_until = now + max(0.0, lifetime)
        else:
            self.value = self.connection.current_token()
            self.valid_until = now + TOKEN_REREAD_SECONDS
        return self.value


# -- in-cluster ----------------------------------------------------------------------------------


def load_incluster(env: Mapping[str, str] | None = None, directory: str | None = None) -> Connection:
    """The Pod's service account: the API server from the environment (default: `os.environ`), the token
    (re-read while the process runs), CA and namespace from `directory` (default: SERVICE_ACCOUNT_DIR)."""
    env = os.environ if env is None else env
    directory = SERVICE_ACCOUNT_DIR if directory is None else directory
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("in-cluster configuration needs KUBERNETES_SERVICE_HOST and _PORT")
    token_path = os.path.join(directory, "token")
    try:
        token = Path(token_path).read_text().strip()
    except OSError as exc:
        raise KubeConfigError(f"in-cluster configuration: cannot read the token {token_path}: {exc}") from exc
    namespace_file = Path(directory, "namespace")
    namespace = namespace_file.read_text().strip() if namespace_file.exists() else None
    ca = os.path.join(directory, "ca.crt")
    return Connection(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_path=ca if os.path.exists(ca) else None,
        token=token,
        token_path=token_path,
        default_namespace=namespace or None,
    )


# -- kubeconfig ----------------------------------------------------------------------------------

_data_dir: str | None = None


def _data_file(name: str, data: str) -> str:
    """The base64 `data` of a kubeconfig's *-data field in a private file (kopf and `ssl` want paths);
    removed at exit."""
    global _data_dir
    if _data_dir is None:
        _data_dir = tempfile.mkdtemp(prefix="tako-kube-")
        atexit.register(shutil.rmtree, _data_dir, True)
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise KubeConfigError(f"kubeconfig: {name}-data is not valid base64") from exc
    fd, path = tempfile.mkstemp(prefix=f"{name}-", dir=_data_dir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    return path


@dataclass
class _Merged:
    """Named entries of every kubeconfig file (first definition wins), each with its file's directory."""

    current_context: str | None = None
    sections: dict[str, dict[str, tuple[dict[str, Any], Path]]] = field(default_factory=dict)

    def add(self, config: Mapping[str, Any], base: Path) -> None:
        if not self.current_context and config.get("current-context"):
            self.current_context = str(config["current-context"])
        for section in ("clusters", "users", "contexts"):
            entries = self.sections.setdefault(section, {})
            for entry in config.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") is not None:
                    entries.setdefault(str(entry["name"]), (entry, base))

    def named(self, section: str, name: str, key: str, where: str) -> tuple[dict[str, Any], Path]:
        found = self.sections.get(section, {}).get(name)
        if found is None:
            raise KubeConfigError(f"kubeconfig {where}: no {key} named {name!r} in {section}")
        block = found[0].get(key) or {}
        if not isinstance(block, dict):
            raise KubeConfigError(f"kubeconfig {where}: {section} entry {name!r} has no {key} mapping")
        return block, found[1]


def _file_or_data(block: dict[str, Any], field_name: str, base: Path) -> str | None:
    """`field_name` (a path, relative to its kubeconfig's directory) or `field_name`-data."""
    if block.get(f"{field_name}-data"):
        return _data_file(field_name, str(block[f"{field_name}-data"]))
    if block.get(field_name):
        return str(base / os.path.expanduser(str(block[field_name])))
    return None


def _exec_plugin(spec: Any, base: Path, where: str) -> ExecPlugin:
    if not isinstance(spec, dict) or not spec.get("command"):
        raise KubeConfigError(f"kubeconfig {where}: an exec credential plugin needs a command")
    api_version = str(spec.get("apiVersion") or "")
    if api_version not in EXEC_API_VERSIONS:
        raise KubeConfigError(
            f"kubeconfig {where}: exec apiVersion {api_version!r} is not supported "
            f"(supported: {', '.join(EXEC_API_VERSIONS)})"
        )
    env = tuple(
        (str(e.get("name")), str(e.get("value", ""))) for e in spec.get("env") or [] if isinstance(e, dict)
    )
    return ExecPlugin(
        command=str(spec["command"]),
        args=tuple(str(a) for a in spec.get("args") or []),
        env=env,
        api_version=api_version,
        base_dir=str(base),
        install_hint=str(spec.get("installHint") or ""),
    )


def load_kubeconfig(paths: str | list[str], context: str | None = None) -> Connection:
    """The current context (or `context`) of the kubeconfig at `paths`: one path, or a list merged as
    kubectl merges `$KUBECONFIG` (missing files in a list are skipped, as kubectl skips them)."""
    import yaml

    listed = [paths] if isinstance(paths, str) else [p for p in paths if p]
    where = os.pathsep.join(listed)
    merged = _Merged()
    for path in listed:
        if len(listed) > 1 and not os.path.exists(path):
            continue
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        if not isinstance(config, dict):
            raise KubeConfigError(f"kubeconfig {path} is not a mapping")
        merged.add(config, Path(path).resolve().parent)
    name = context or merged.current_context
    if not name:
        raise KubeConfigError(f"kubeconfig {where}: no current-context")
    ctx, _ = merged.named("contexts", name, "context", where)
    cluster, cluster_base = merged.named("clusters", str(ctx.get("cluster")), "cluster", where)
    user, user_base = ({}, Path(".")) if not ctx.get("user") else merged.named(
        "users", str(ctx.get("user")), "user", where
    )  # fmt: skip
    for unsupported in UNSUPPORTED_USER_FIELDS:
        if user.get(unsupported):
            raise KubeConfigError(
                f"kubeconfig {where}: user {ctx.get('user')!r} uses {unsupported!r}, which is not supported "
                "(use a token, tokenFile, an exec credential plugin or a client certificate)"
            )
    if not cluster.get("server"):
        raise KubeConfigError(f"kubeconfig {where}: cluster {ctx.get('cluster')!r} has no server")
    token_path = str(user_base / user["tokenFile"]) if user.get("tokenFile") else None
    connection = Connection(
        server=str(cluster["server"]),
        ca_path=_file_or_data(cluster, "certificate-authority", cluster_base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=user.get("token") or None,
        cert_path=_file_or_data(user, "client-certificate", user_base),
        key_path=_file_or_data(user, "client-key", user_base),
        default_namespace=ctx.get("namespace") or None,
        token_path=token_path,
        exec_plugin=_exec_plugin(user["exec"], user_base, where) if user.get("exec") else None,
    )
    if token_path:
        connection = dataclasses.replace(connection, token=connection.current_token())
    return connection


def load_connection(kubeconfig: str | None = None, in_cluster: bool = False) -> Connection:
    """In-cluster config if asked for, or if available and no kubeconfig is named; else `kubeconfig`,
    `$KUBECONFIG` (every file of the list) or `~/.kube/config`."""
    named = kubeconfig or os.environ.get("KUBECONFIG")
    if in_cluster or (not named and os.environ.get("KUBERNETES_SERVICE_HOST")):
        return load_incluster()
    if not named:
        return load_kubeconfig(os.path.expanduser("~/.kube/config"))
    listed = named.split(os.pathsep)
    return load_kubeconfig(listed[0] if len(listed) == 1 else listed)
