"""`python -m tako_operator`: the same flags as `tako-vm operator` (see docs/operator.md)."""

from __future__ import annotations

import argparse
import sys

from tako_operator import forbid_kubernetes_client

forbid_kubernetes_client()  # before kopf is imported (by tako_operator.main)

from tako_operator.io.leader import LeadershipLost  # noqa: E402
from tako_operator.main import run_operator  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tako-vm operator",
        description="Run the PythonJob operator. Connects with the in-cluster service account when "
        "KUBERNETES_SERVICE_HOST is set, else with $KUBECONFIG (or ~/.kube/config).",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable; globs like 'team-*' allowed). "
        "Default: the kubeconfig's namespace",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--peering",
        metavar="NAME",
        default=None,
        help="kopf peering name: replicas with the same name elect one active operator "
        "(needs the KopfPeering CRDs and object)",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="ignore peering entirely (one replica only; for development)",
    )
    parser.add_argument("--priority", type=int, default=0, help="peering priority; the highest one acts")
    parser.add_argument(
        "--leader-election",
        metavar="LEASE",
        default=None,
        help="replicas started alike elect one leader through this coordination.k8s.io Lease; "
        "only the leader reconciles (replaces --peering)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        default=None,
        help="the Lease's namespace (default: $POD_NAMESPACE, else the kubeconfig's namespace)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default: $TAKO_VM_METRICS_PORT, else off)",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_operator(
            namespaces=args.namespaces,
            all_namespaces=args.all_namespaces,
            peering=args.peering,
            standalone=args.standalone,
            liveness=args.liveness,
            metrics_port=args.metrics_port,
            priority=args.priority,
            kubeconfig=args.kubeconfig,
            leader_election=args.leader_election,
            leader_election_namespace=args.leader_election_namespace,
        )
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"tako-vm operator: {exc}", file=sys.stderr)
        return 2
    except LeadershipLost as exc:
        print(f"tako-vm operator: {exc}; exiting to restart as a follower", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
