"""The operator as the Helm chart deploys it: render the chart with Helm's own library
(helm-python-sdk), read the operator container's arguments and environment, and start `tako-vm
operator` processes with them against kmock; and the RBAC the chart grants it.

Between two replicas only what differs between two Pods differs: $POD_NAME and the port numbers of
--liveness/--metrics-port (each Pod has its own network namespace; processes on one host cannot bind
the same port).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from kube_harness import KubeHarness

REPO = Path(__file__).resolve().parents[2]
RELEASE = "tako"
OPERATOR = "tako-operator"  # the operator's fullname with fullnameOverride "tako"
SHIM = "tako-shim"


def render(values: dict[str, Any], release_namespace: str) -> list[dict[str, Any]]:
    with helm.Chart.load(REPO / "charts" / "tako-vm") as chart:
        rendered = chart.render(
            {"fullnameOverride": "tako", **values}, name=RELEASE, namespace=release_namespace
        )
    return [
        doc
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if isinstance(doc, dict)
    ]


def operator_container(objects: list[dict[str, Any]]) -> tuple[list[str], dict[str, str], int]:
    """(args, plain env values, replicas) of the rendered operator Deployment."""
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == OPERATOR]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.pop("HOME", None)
    return list(container["args"]), env, int(deployment["spec"]["replicas"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_own_ports(args: list[str]) -> list[str]:
    out = []
    for arg in args:
        if arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{free_port()}/healthz"
        elif arg.startswith("--metrics-port="):
            arg = f"--metrics-port={free_port()}"
        out.append(arg)
    return out


class Replica:
    """One operator Pod: `tako-vm <args>` with the chart's environment and the downward-API values."""

    def __init__(
        self,
        kube: KubeHarness,
        tmp_path: Path,
        pod: str,
        args: list[str],
        env: dict[str, str],
        pod_namespace: str,
        kubeconfig: Path | None = None,
    ) -> None:
        self.pod = pod
        self.args = with_own_ports(args)
        self.log = tmp_path / f"{pod}.log"
        environment = {
            **os.environ,
            **env,
            "KUBECONFIG": str(kubeconfig or kube.kubeconfig(tmp_path)),
            "POD_NAME": pod,
            "POD_NAMESPACE": pod_namespace,
        }
        environment.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "tako-vm"), *self.args],
            env=environment,
            cwd=REPO,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    @property
    def liveness(self) -> str:
        (url,) = [a.removeprefix("--liveness=") for a in self.args if a.startswith("--liveness=")]
        return url

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def lease_name(args: list[str]) -> str:
    (name,) = [a.removeprefix("--leader-election=") for a in args if a.startswith("--leader-election=")]
    return name


def lease(kube: KubeHarness, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    assert kube.http is not None
    resp = kube.http.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace or kube.namespace}/leases/{name}"
    )
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def holder_pod(kube: KubeHarness, name: str, namespace: str | None = None) -> str | None:
    identity = str(((lease(kube, name, namespace) or {}).get("spec") or {}).get("holderIdentity") or "")
    return identity.rsplit("_", 1)[0] if identity else None


# --- RBAC ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    namespace: str | None  # None: cluster-wide (a ClusterRole bound by a ClusterRoleBinding)
    group: str
    resource: str  # plural[/subresource]
    verb: str
    names: frozenset[str] | None = None  # resourceNames


def operator_grants(objects: list[dict[str, Any]], release_namespace: str) -> list[Grant]:
    """Every permission the rendered chart gives the operator's ServiceAccount."""
    return account_grants(objects, release_namespace, OPERATOR)


def shim_grants(objects: list[dict[str, Any]], release_namespace: str) -> list[Grant]:
    """Every permission the rendered chart gives the shim's ServiceAccount."""
    return account_grants(objects, release_namespace, SHIM)


def account_grants(objects: list[dict[str, Any]], release_namespace: str, account: str) -> list[Grant]:
    subject = {"kind": "ServiceAccount", "name": account, "namespace": release_namespace}
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    grants: list[Grant] = []
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or subject not in binding["subjects"]:
            continue
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            names = frozenset(rule["resourceNames"]) if rule.get("resourceNames") else None
            grants += [
                Grant(namespace, group, resource, verb, names)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            ]
    return grants


def verb_of(request: Any) -> str:
    action = request.action.value
    if action == "UPDATE":
        return "update" if request.method.value == "PUT" else "patch"
    return {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "DELETE": "delete"}[action]


def rule_of(request: Any) -> tuple[str, str, str]:
    resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
    return (request.resource.group or "", resource, verb_of(request))


class Enforcer:
    """Allows a request only if a grant covers its verb, resource, namespace and name (RBAC's rules:
    a cluster-wide grant covers every namespace; resourceNames never cover create or list), and, as
    the OwnerReferencesPermissionEnforcement admission plugin (OpenShift) does, a write that sets an
    owner reference with blockOwnerDeletion only with `update` on the owner's `finalizers` subresource."""

    def __init__(self, grants: list[Grant]) -> None:
        self.grants = grants
        self.denied: list[str] = []
        self.used: set[tuple[str | None, str, str, str]] = set()

    def __call__(self, request: Any) -> bool:
        group, resource, verb = rule_of(request)
        if not self.allows(request.namespace, request.name, group, resource, verb):
            self.denied.append(f"{verb} {group}/{resource} namespace={request.namespace} name={request.name}")
            return False
        for owner in blocking_owners(request.data if verb in ("create", "patch", "update") else None):
            owner_group = owner["apiVersion"].rpartition("/")[0]
            finalizers = f"{owner['kind'].lower()}s/finalizers"
            if not self.allows(request.namespace, owner["name"], owner_group, finalizers, "update"):
                self.denied.append(
                    f"{verb} {group}/{resource} namespace={request.namespace}: blockOwnerDeletion on a "
                    f"{owner['kind']} needs update on {owner_group}/{finalizers}"
                )
                return False
        self.used.add((request.namespace, group, resource, verb))
        return True

    def allows(self, namespace: str | None, name: str | None, group: str, resource: str, verb: str) -> bool:
        for grant in self.grants:
            if (grant.group, grant.resource, grant.verb) != (group, resource, verb):
                continue
            if grant.namespace is not None and grant.namespace != namespace:
                continue
            if grant.names is not None and name not in grant.names:
                continue
            return True
        return False


def blocking_owners(body: Any) -> list[dict[str, Any]]:
    """Owner references with blockOwnerDeletion: true in a request body."""
    if not isinstance(body, dict):
        return []
    owners = (body.get("metadata") or {}).get("ownerReferences") or []
    return [o for o in owners if isinstance(o, dict) and o.get("blockOwnerDeletion")]
