"""The namespaces the operator watches, each mode as the chart deploys it, with the chart's RBAC enforced.

For every mode the chart is rendered (Helm's own library), the operator runs as its Deployment says
(`tako-vm operator` with the rendered arguments and environment, no --namespace flag), and kmock
answers 403 to every request the rendered Roles/ClusterRoles do not allow (chart_support.Enforcer in
front of kmock); any such request fails the test. Modes:
- a list of job namespaces: a Role in each, jobs there run, a job elsewhere is not touched;
- an empty list: the release namespace only;
- jobs.allNamespaces: one ClusterRole, jobs in any namespace run.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from chart_support import (
    Enforcer,
    Replica,
    holder_pod,
    lease_name,
    operator_container,
    operator_grants,
    render,
)
from kube_harness import KubeHarness, wait_for
from operator_support import BusyKubelet, sample_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
RELEASE_NS = "tako-system"

# mode -> (values, release namespace, namespaces whose jobs must run, namespaces whose jobs must not)
MODES: dict[str, tuple[dict[str, Any], str, list[str], list[str]]] = {
    "job-namespaces": (
        {"jobs": {"namespaces": ["team-a", "team-b"]}},
        RELEASE_NS,
        ["team-a", "team-b"],
        ["team-c"],
    ),
    "release-namespace": ({"jobs": {"namespaces": []}}, "team-a", ["team-a"], ["team-b"]),
    "all-namespaces": (
        {"jobs": {"namespaces": ["team-a"], "allNamespaces": True}},
        RELEASE_NS,
        ["team-a", "team-b", "team-c"],
        [],
    ),
}


def phase(kube: KubeHarness, name: str, namespace: str) -> str | None:
    return ((kube.get("pythonjobs", name, namespace=namespace) or {}).get("status") or {}).get("phase")


@pytest.mark.parametrize("mode", list(MODES))
def test_the_operator_watches_what_the_chart_configured_with_its_rbac_enforced(
    kube: KubeHarness, tmp_path: Path, mode: str
) -> None:
    values, release_ns, watched, outside = MODES[mode]
    objects = render(values, release_ns)
    cluster_roles = [o for o in objects if o["kind"] == "ClusterRole"]
    roles = sorted(
        o["metadata"]["namespace"]
        for o in objects
        if o["kind"] == "Role" and "operator" in o["metadata"]["name"]
    )
    if mode == "all-namespaces":
        assert [r["metadata"]["name"] for r in cluster_roles] == ["tako-operator"]
        assert roles == [release_ns], "only the leader-election Role is namespaced"
    else:
        assert cluster_roles == [], "nothing cluster-wide for a namespaced install"
        assert roles == sorted([*watched, release_ns]), "one Role per watched namespace, plus the Lease's"
    args, env, _ = operator_container(objects)
    assert not any(a.startswith(("--namespace", "--all-namespaces")) for a in args)
    enforcer = Enforcer(operator_grants(objects, release_ns))
    kube.authorize(enforcer)
    replica = Replica(kube, tmp_path, "tako-operator-0", args, env, release_ns)
    try:
        wait_for(
            lambda: holder_pod(kube, lease_name(args), release_ns), timeout=60, what="the operator to lead"
        )
        for namespace in watched + outside:
            kube.create("pythonjobs", sample_job(f"job-{namespace}"), namespace=namespace)
        with BusyKubelet(kube, namespaces=watched + outside):
            for namespace in watched:
                wait_for(
                    lambda ns=namespace: phase(kube, f"job-{ns}", ns) == "Succeeded",
                    timeout=90,
                    what=f"the job in {namespace} to succeed",
                )
            time.sleep(1.0)  # the operator had every chance to touch the others
        for namespace in outside:
            assert phase(kube, f"job-{namespace}", namespace) is None, f"{namespace} is not watched"
            assert not kube.list("pods", namespace=namespace)
    finally:
        replica.stop(signal.SIGTERM)
        kube.authorize(None)
    assert enforcer.denied == [], f"requests the chart's RBAC forbids ({mode})"
    scanned = {(group, resource) for _, group, resource, _ in enforcer.used}
    assert ("", "namespaces") not in scanned, "no namespace scanning"
    assert ("", "pods") in scanned and ("coordination.k8s.io", "leases") in scanned


def test_the_enforcer_refuses_what_the_rendered_rbac_does_not_grant(
    kube: KubeHarness, tmp_path: Path
) -> None:
    """The check is real: with the job-namespaces mode's RBAC, a client other than the test is refused
    outside the job namespaces, cluster-wide and for another Lease, and let through inside."""
    import kubernetes

    values, release_ns, _, _ = MODES["job-namespaces"]
    enforcer = Enforcer(operator_grants(render(values, release_ns), release_ns))
    kube.authorize(enforcer)
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(
        config_file=str(kube.kubeconfig(tmp_path)), client_configuration=config
    )
    with kubernetes.client.ApiClient(config) as client:
        core = kubernetes.client.CoreV1Api(client)
        core.list_namespaced_pod("team-a")
        for call in (
            lambda: core.list_namespaced_pod("team-c"),
            lambda: core.list_pod_for_all_namespaces(),  # cluster-wide
            lambda: kubernetes.client.CoordinationV1Api(client).read_namespaced_lease("other", release_ns),
        ):
            with pytest.raises(kubernetes.client.ApiException) as refused:
                call()
            assert refused.value.status == 403
    assert len(enforcer.denied) == 3


def test_owner_references_that_block_deletion_need_the_finalizers_grant(
    kube: KubeHarness, tmp_path: Path
) -> None:
    """OwnerReferencesPermissionEnforcement: the chart's Role lets the operator create an object owned
    by a PythonJob with blockOwnerDeletion; without `update` on pythonjobs/finalizers it is refused."""
    import kubernetes

    values, release_ns, _, _ = MODES["job-namespaces"]
    grants = operator_grants(render(values, release_ns), release_ns)
    assert any(g.resource == "pythonjobs/finalizers" and g.verb == "update" for g in grants)
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [
                {
                    "apiVersion": "takovm.dev/v1alpha1",
                    "kind": "PythonJob",
                    "name": "j",
                    "uid": "u-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
    }
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(
        config_file=str(kube.kubeconfig(tmp_path)), client_configuration=config
    )
    with kubernetes.client.ApiClient(config) as client:
        core = kubernetes.client.CoreV1Api(client)
        kube.authorize(Enforcer(grants))
        core.create_namespaced_config_map("team-a", owned)
        without = Enforcer([g for g in grants if g.resource != "pythonjobs/finalizers"])
        kube.authorize(without)
        with pytest.raises(kubernetes.client.ApiException) as refused:
            core.create_namespaced_config_map("team-b", owned)
        assert refused.value.status == 403
        assert "pythonjobs/finalizers" in without.denied[0]
