"""Server-side commands: `tako-vm server`, `tako-vm operator`, `tako-vm config`.

They import the server/operator packages lazily, so the SDK alone (without aiohttp, kopf or the
Kubernetes client) still gives the client commands.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from tako_vm.cli._common import CommandError, Subparsers, import_extra


def mask_secrets(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the settings with API keys shown as their first 4 characters only."""
    shown = dict(settings)
    keys = shown.get("api_keys")
    if isinstance(keys, Mapping):
        shown["api_keys"] = {f"{key[:4]}…(masked)": tenant for key, tenant in keys.items()}
    return shown


def config_option() -> argparse.ArgumentParser:
    """`-c/--config` accepted after the sub-command too (`tako-vm server -c FILE`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help="server configuration file (default: $TAKO_VM_CONFIG or ./tako_vm.yaml)",
    )
    return parent


def cmd_server(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    server = import_extra("tako_shim.server", "tako-vm server", "server")
    config = import_extra("tako_shim.config", "tako-vm server", "server")
    try:
        server.run_server(
            args.config,
            args.backend,
            args.host,
            args.port,
            args.data_dir,
            log_format=args.log_format,
            log_file=args.log_file,
        )
    except config.ConfigError as exc:
        raise CommandError(str(exc)) from exc
    return 0


def cmd_operator(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    package = import_extra("tako_operator", "tako-vm operator", "operator")
    getattr(package, "forbid_kubernetes_client", lambda: None)()  # kopf would import it: ~38 MiB
    main = import_extra("tako_operator.main", "tako-vm operator", "operator")
    run_operator: Callable[..., Any] | None = getattr(main, "run_operator", None)
    if run_operator is None:
        raise CommandError("tako-vm operator: tako_operator.main has no run_operator() in this build")
    if args.namespace and args.all_namespaces:
        raise CommandError("--namespace and --all-namespaces are mutually exclusive")
    run_operator(
        namespaces=args.namespace or None,
        all_namespaces=args.all_namespaces,
        peering=args.peering,
        standalone=args.peering is None,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        kubeconfig=args.kubeconfig,
        leader_election=args.leader_election,
        leader_election_namespace=args.leader_election_namespace,
    )
    return 0


def cmd_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = import_extra("tako_shim.config", "tako-vm config", "server")
    try:
        settings = config.load_settings(args.config, overrides={"backend": args.backend})
    except config.ConfigError as exc:
        raise CommandError(str(exc)) from exc
    shown = mask_secrets(settings.model_dump(mode="json"))
    if args.json:
        print(json.dumps(shown, indent=2, sort_keys=True), file=out)
    else:
        import yaml

        print(yaml.safe_dump(shown, sort_keys=True, allow_unicode=True).rstrip(), file=out)
    return 0


def register(commands: Subparsers, client_opts: argparse.ArgumentParser) -> None:
    config_opt = config_option()
    server = commands.add_parser(
        "server", parents=[config_opt], help="run the REST server (local gVisor or kubernetes backend)"
    )
    server.add_argument("--backend", choices=["local", "kubernetes"], help="default: the config's backend")
    server.add_argument("--host", help="bind address (non-loopback needs auth)")
    server.add_argument("--port", type=int, help="port (0 = any free port)")
    server.add_argument("--data-dir", help="state directory; one server per data dir (default: ~/.tako_vm)")
    server.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log lines as text or JSON objects"
    )
    server.add_argument("--log-file", help="append the log to this file instead of stderr")
    server.set_defaults(handler=cmd_server)

    operator = commands.add_parser("operator", help="run the Kubernetes operator")
    operator.add_argument("--namespace", action="append", help="watch only this namespace (repeatable)")
    operator.add_argument("--all-namespaces", action="store_true", help="watch PythonJobs in every namespace")
    operator.add_argument(
        "--peering", help="kopf peering object for active/standby replicas (default: standalone)"
    )
    operator.add_argument(
        "--leader-election",
        metavar="LEASE",
        help="replicas started alike elect one leader through this coordination.k8s.io Lease",
    )
    operator.add_argument(
        "--leader-election-namespace", metavar="NS", help="the Lease's namespace (default: $POD_NAMESPACE)"
    )
    operator.add_argument("--liveness", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    operator.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    operator.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster or ~/.kube/config)")
    operator.set_defaults(handler=cmd_operator)

    config = commands.add_parser(
        "config", parents=[config_opt], help="print the effective server configuration (secrets masked)"
    )
    config.add_argument("--backend", choices=["local", "kubernetes"])
    config.add_argument("--json", action="store_true", help="JSON instead of YAML")
    config.set_defaults(handler=cmd_config)
