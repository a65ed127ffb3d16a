"""A test-only node agent: runs the operator's Pods from the kmock emulator in real gVisor sandboxes.

kmock has no kubelet. This agent plays one, for Pods with a `runtimeClassName`:
- volumes: `configMap` and `projected` (configMap sources, items, defaultMode) are materialised from
  the emulator's ConfigMaps into read-only host directories; `emptyDir` becomes a tmpfs with its
  `sizeLimit` (or a host directory shared between the init and main containers);
- each container (init containers first, in order) runs in its own `runsc run` sandbox with the
  container's command, env, workingDir, `securityContext.runAsUser/runAsGroup`, a read-only root,
  its `resources.limits` (memory cgroup + CPU quota), no network (the install container gets the
  host network, standing in for the install egress NetworkPolicy, which nothing enforces here);
- `activeDeadlineSeconds` is enforced from outside: the sandbox is killed and the Pod reports
  `Failed/DeadlineExceeded`, as the kubelet does;
- container output is served as the Pod log (`KubeHarness.set_log`) and container statuses are
  written back (`terminated.exitCode`, reason `Completed`/`Error`/`OOMKilled` from the memory cgroup);
- a Pod deleted while running (cancel) has its sandbox killed;
- a container that declares `ports` (a session Pod) gets a Pod network instead of none: its own network
  namespace joined to the host by a veth pair (10.213.N.2 in the sandbox, 10.213.N.1 on the host, no
  default route, so nothing beyond the host is reachable: no egress), gVisor's netstack on it
  (`--network=sandbox`); once the port accepts connections the Pod reports `podIP` and `Ready`, as the
  kubelet's readiness probe would. NetworkPolicies are not enforced (that is the CNI's job);

It is deliberately simple and lives under tests/, never in the product.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kube_harness import KubeHarness

from tako_shim.backends.local.sandbox import oci as sandbox

log = logging.getLogger("nodeagent")
REPO = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "tako-nodeagent"
CONTROLLERS = ("memory", "pids", "cpu")
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def find_runsc() -> str | None:
    for candidate in (os.environ.get("TAKO_VM_RUNSC"), str(REPO / ".tools/bin/runsc"), shutil.which("runsc")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def runsc_problem() -> str | None:
    """Why sandboxes cannot run here (for a clear skip reason), or None."""
    if os.geteuid() != 0:
        return "the node agent needs root (rootful runsc and cgroups)"
    if find_runsc() is None:
        return "no runsc binary (run scripts/install-system.sh)"
    if not (CGROUP_ROOT / "memory").is_dir():
        return "no cgroup v1 memory controller at /sys/fs/cgroup/memory"
    return None


def memory_bytes(quantity: str) -> int:
    for unit, factor in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(float(quantity))


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodRun:
    """One Pod: its host directories, then its containers, one sandbox each."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.pod = pod
        self.name = pod["metadata"]["name"]
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=agent.work_dir))
        self.volumes: dict[str, dict[str, Any]] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.cid: str | None = None
        self.deleted = threading.Event()
        self.netns: str | None = None
        self.pod_ip: str | None = None
        self.statuses: dict[str, list[dict[str, Any]]] = {
            "initContainerStatuses": [],
            "containerStatuses": [],
        }

    # -- volumes ------------------------------------------------------------------------------

    def _write_configmap(
        self, target: Path, name: str, items: list[dict[str, Any]] | None, mode: int
    ) -> None:
        configmap = self.agent.kube.get("configmaps", name)
        if configmap is None:
            raise RuntimeError(f"configmap {name!r} not found")
        data: dict[str, str] = configmap.get("data") or {}
        pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, path in pairs:
            dest = target / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(data[key])
            dest.chmod(mode)

    def prepare_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            path = self.dir / "volumes" / name
            path.mkdir(parents=True)
            path.chmod(0o755)
            if "configMap" in volume:
                cm = volume["configMap"]
                self._write_configmap(path, cm["name"], cm.get("items"), cm.get("defaultMode", 0o644))
                self.volumes[name] = {"kind": "dir", "path": str(path)}
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    cm = source["configMap"]
                    mode = volume["projected"].get("defaultMode", 0o644)
                    self._write_configmap(path, cm["name"], cm.get("items"), mode)
                self.volumes[name] = {"kind": "dir", "path": str(path)}
            elif "emptyDir" in volume:
                size = memory_bytes(volume["emptyDir"].get("sizeLimit", "64Mi"))
                path.chmod(0o1777)
                self.volumes[name] = {"kind": "empty", "path": str(path), "size": size}
            else:
                raise RuntimeError(f"volume type of {name!r} not supported by the node agent")

    # -- the Pod network (containers with ports) ------------------------------------------------

    def setup_network(self) -> None:
        """A network namespace joined to the host by a veth pair; sets `self.pod_ip`."""
        index = self.agent.next_subnet()
        self.netns = f"na-{secrets.token_hex(4)}"
        host_if, pod_if = f"vh{self.netns[3:]}", f"vp{self.netns[3:]}"
        self.pod_ip, host_ip = f"10.213.{index}.2", f"10.213.{index}.1"
        for argv in (
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if],
            ["ip", "link", "set", pod_if, "netns", self.netns],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "netns", "exec", self.netns, "ip", "addr", "add", f"{self.pod_ip}/30", "dev", pod_if],
            ["ip", "netns", "exec", self.netns, "ip", "link", "set", pod_if, "up"],
            ["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def teardown_network(self) -> None:
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30, check=False)

    def _report_ready(self, port: int) -> None:
        """Readiness as the kubelet's tcpSocket probe sees it: Ready once the port accepts a connection."""
        assert self.pod_ip is not None
        while self.proc is not None and self.proc.poll() is None and not self.deleted.is_set():
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex((self.pod_ip, port)) == 0:
                    status = {
                        "phase": "Running",
                        "podIP": self.pod_ip,
                        "conditions": [{"type": "Ready", "status": "True"}],
                    }
                    with contextlib.suppress(Exception):
                        self.agent.kube.patch_status("pods", self.name, status)
                    return
            time.sleep(0.1)

    # -- one container ------------------------------------------------------------------------

    def oci_spec(
        self, container: dict[str, Any], cgroup: str, shared: set[str]
    ) -> tuple[dict[str, Any], int]:
        """The OCI runtime spec of one container, and its memory limit in bytes."""
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        limits = (container.get("resources") or {}).get("limits") or {}
        memory = memory_bytes(limits.get("memory", "512Mi"))
        cpu = cpu_cores(str(limits.get("cpu", "1")))
        mounts: list[dict[str, Any]] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {
                "destination": "/usr",
                "type": "bind",
                "source": "/usr",
                "options": ["rbind", "nosuid", "nodev", "ro"],
            },
            {
                "destination": "/etc",
                "type": "bind",
                "source": str(self.agent.etc_dir),
                "options": ["rbind", "nosuid", "nodev", "ro"],
            },
        ]
        for mount in container.get("volumeMounts") or []:
            volume = self.volumes[mount["name"]]
            read_only = bool(mount.get("readOnly"))
            if volume["kind"] == "empty" and mount["name"] not in shared:
                options = ["nosuid", "nodev", "mode=1777", f"size={volume['size']}"]
                mounts.append(
                    {
                        "destination": mount["mountPath"],
                        "type": "tmpfs",
                        "source": "tmpfs",
                        "options": options,
                    }
                )
            else:
                options = ["rbind", "nosuid", "nodev", "ro" if read_only or volume["kind"] == "dir" else "rw"]
                mounts.append(
                    {
                        "destination": mount["mountPath"],
                        "type": "bind",
                        "source": volume["path"],
                        "options": options,
                    }
                )
        env = ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/tmp"]
        env += [f"{e['name']}={e.get('value', '')}" for e in container.get("env") or []]
        period = 100_000
        network = container["name"] != "install"
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")] + (
            [{"type": "network", **({"path": f"/var/run/netns/{self.netns}"} if self.netns else {})}]
            if network
            else []
        )
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": int(sc.get("runAsUser", 65534)), "gid": int(sc.get("runAsGroup", 65534))},
                "args": [*container.get("command", []), *container.get("args", [])],
                "env": env,
                "cwd": container.get("workingDir", "/"),
                "noNewPrivileges": sc.get("allowPrivilegeEscalation") is False,
                "capabilities": {
                    k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")
                },
                "rlimits": [{"type": "RLIMIT_CORE", "hard": 0, "soft": 0}],
            },
            "root": {"path": str(self.agent.rootfs), "readonly": bool(sc.get("readOnlyRootFilesystem"))},
            "hostname": self.name[:63],
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces,
                "resources": {
                    "memory": {"limit": memory},
                    "cpu": {"quota": int(cpu * period), "period": period},
                },
                "cgroupsPath": cgroup,
            },
        }, memory

    def run_container(self, container: dict[str, Any], deadline: float, shared: set[str]) -> dict[str, Any]:
        """Run one container to completion; returns its `terminated` state."""
        cid = f"na-{secrets.token_hex(5)}"
        cgroup = f"/{CGROUP_PARENT}/{cid}"
        spec, memory = self.oci_spec(container, cgroup, shared)
        bundle = self.dir / f"bundle-{container['name']}"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        for controller in CONTROLLERS:
            path = CGROUP_ROOT / controller / CGROUP_PARENT / cid
            path.mkdir(parents=True, exist_ok=True)
        (CGROUP_ROOT / "memory" / CGROUP_PARENT / cid / "memory.limit_in_bytes").write_text(str(memory))
        network = "none" if container["name"] != "install" else "host"
        ports = container.get("ports") or []
        if ports:
            # This runsc (20240729) refuses --network=sandbox on kernels that show rmem_default in
            # every netns ("cannot run with network enabled in root network namespace"), so the Pod
            # network is host networking (hostinet) inside the Pod's own netns (the spec's path).
            network = "host"
        argv = [
            self.agent.runsc, "--root", str(self.agent.state_dir), f"--platform={self.agent.platform}",
            f"--network={network}", "--overlay2=none", "run", "--bundle", str(bundle), cid,
        ]  # fmt: skip
        started = _now()
        self.cid = cid
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self._set_state(container["name"], {"running": {"startedAt": started}}, phase="Running")
        if ports:
            port = int(ports[0]["containerPort"])
            threading.Thread(target=self._report_ready, args=(port,), daemon=True).start()
        # stdout is served as it arrives to `follow=true` log readers (the kubelet streams logs too).
        kube, pod, name = self.agent.kube, self.name, container["name"]
        out_chunks: list[bytes] = []
        assert self.proc.stdout is not None
        out_fd = self.proc.stdout.fileno()

        def pump() -> None:
            while chunk := os.read(out_fd, 65536):
                out_chunks.append(chunk)
                kube.stream_log(pod, name, chunk)

        err_chunks: list[bytes] = []
        assert self.proc.stderr is not None
        err_fd = self.proc.stderr.fileno()

        def pump_err() -> None:
            while chunk := os.read(err_fd, 65536):
                err_chunks.append(chunk)

        pumping = threading.Thread(target=pump, daemon=True)
        pumping.start()
        pumping_err = threading.Thread(target=pump_err, daemon=True)
        pumping_err.start()
        timed_out = False
        try:
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            self._kill(cid)
            self.proc.wait()
        pumping.join(timeout=10)
        pumping_err.join(timeout=10)
        stderr = b"".join(err_chunks)
        stdout = b"".join(out_chunks)
        oom = self._oom_killed(cid)
        self._cleanup(cid)
        log_text = stderr.decode("utf-8", "replace") + stdout.decode("utf-8", "replace")
        self.agent.kube.set_log(self.name, container["name"], log_text)
        kube.end_log(pod, name)
        code = self.proc.returncode
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        if timed_out:
            reason = "DeadlineExceeded"
        return {
            "exitCode": 137 if oom else code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": _now(),
        }

    def _kill(self, cid: str) -> None:
        subprocess.run(
            [self.agent.runsc, "--root", str(self.agent.state_dir), "kill", cid, "KILL"],
            capture_output=True,
            timeout=30,
            check=False,
        )

    def _oom_killed(self, cid: str) -> bool:
        path = CGROUP_ROOT / "memory" / CGROUP_PARENT / cid / "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            fields = dict(line.split() for line in path.read_text().splitlines() if line.strip())
            return int(fields.get("oom_kill", "0")) > 0
        return False

    def _cleanup(self, cid: str) -> None:
        if any(self.agent.state_dir.glob(f"{cid}*")):
            subprocess.run(
                [self.agent.runsc, "--root", str(self.agent.state_dir), "delete", "-force", cid],
                capture_output=True,
                timeout=30,
                check=False,
            )
        for controller in CONTROLLERS:
            path = CGROUP_ROOT / controller / CGROUP_PARENT / cid
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)

    # -- pod status -----------------------------------------------------------------------------

    def _set_state(self, container: str, state: dict[str, Any], phase: str | None = None) -> None:
        key = "initContainerStatuses" if container == "install" else "containerStatuses"
        entries = [e for e in self.statuses[key] if e["name"] != container]
        entries.append({"name": container, "state": state})
        self.statuses[key] = entries
        status: dict[str, Any] = {k: v for k, v in self.statuses.items() if v}
        if phase:
            status["phase"] = phase
        if self.deleted.is_set():
            return
        with contextlib.suppress(Exception):
            self.agent.kube.patch_status("pods", self.name, status)

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            log.exception("node agent failed on pod %s", self.name)
            with contextlib.suppress(Exception):
                self.agent.kube.patch_status(
                    "pods", self.name, {"phase": "Failed", "reason": "NodeAgentError", "message": str(exc)}
                )
        finally:
            self.teardown_network()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self) -> None:
        spec = self.pod["spec"]
        deadline = time.monotonic() + float(spec.get("activeDeadlineSeconds") or 3600)
        self.prepare_volumes()
        if any(c.get("ports") for c in spec["containers"]):
            self.setup_network()
        shared = {m["name"] for c in spec.get("initContainers") or [] for m in c.get("volumeMounts") or []}
        shared &= {m["name"] for c in spec["containers"] for m in c.get("volumeMounts") or []}
        shared = {name for name in shared if self.volumes[name]["kind"] == "empty"}
        self.agent.kube.patch_status("pods", self.name, {"phase": "Pending", "startTime": _now()})
        for container in spec.get("initContainers") or []:
            state = self.run_container(container, deadline, shared)
            self._set_state(container["name"], {"terminated": state})
            if state["reason"] == "DeadlineExceeded" or state["exitCode"] != 0:
                return self._finish(state, "Failed")
        for container in spec["containers"]:
            state = self.run_container(container, deadline, shared)
            phase = "Succeeded" if state["exitCode"] == 0 else "Failed"
            if state["reason"] == "DeadlineExceeded":
                state["reason"] = "Error"
                self._set_state(container["name"], {"terminated": state})
                return self._finish(state, "Failed", pod_reason="DeadlineExceeded")
            self._set_state(container["name"], {"terminated": state}, phase=phase)
        return None

    def _finish(self, state: dict[str, Any], phase: str, pod_reason: str | None = None) -> None:
        status: dict[str, Any] = {**{k: v for k, v in self.statuses.items() if v}, "phase": phase}
        if pod_reason:
            status["reason"] = pod_reason
            status["message"] = "Pod was active on the node longer than the specified deadline"
        if not self.deleted.is_set():
            with contextlib.suppress(Exception):
                self.agent.kube.patch_status("pods", self.name, status)


class NodeAgent:
    """Polls the emulator for new gVisor Pods and runs each in a thread of its own."""

    def __init__(self, kube: KubeHarness, work_dir: Path, max_pods: int = 4) -> None:
        runsc = find_runsc()
        if runsc is None:
            raise RuntimeError("no runsc")
        self.runsc = runsc
        self.kube = kube
        self.work_dir = work_dir
        self.state_dir = work_dir / "runsc-state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.platform = "systrap" if "20240729" in self._version() or "2024" in self._version() else "ptrace"
        self.rootfs = work_dir / "rootfs"
        self.etc_dir = work_dir / "etc"
        self._prepare_root()
        self.runs: dict[str, PodRun] = {}
        self._subnets = itertools.count(1)
        self.threads: list[threading.Thread] = []
        self.slots = threading.Semaphore(max_pods)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="nodeagent", daemon=True)

    def next_subnet(self) -> int:
        """A fresh 10.213.N.0/30 per networked Pod, N (1..250) not on any host interface yet: other node
        agents on this machine (another test run, a leaked namespace) may hold some, and two veths with
        the same subnet would route the readiness probe and the shim's calls to the wrong Pod."""
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=10).stdout
        start = next(self._subnets) + secrets.randbelow(250)
        for step in range(250):
            index = (start + step) % 250 + 1
            if f" 10.213.{index}.1/" not in used:
                return index
        raise RuntimeError("no free 10.213.N.0/30 subnet for a Pod network")

    def _version(self) -> str:
        out = subprocess.run(
            [self.runsc, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout

    def _prepare_root(self) -> None:
        host = {
            n: (os.readlink(f"/{n}") if os.path.islink(f"/{n}") else None)
            for n in ("bin", "sbin", "lib", "lib64")
            if os.path.lexists(f"/{n}")
        }
        self.rootfs.mkdir(exist_ok=True)
        for name, target in sandbox.rootfs_links(host).items():
            path = self.rootfs / name
            if target is not None:
                path.symlink_to(target)
            else:
                path.mkdir(exist_ok=True)
        self.rootfs.chmod(0o755)
        self.etc_dir.mkdir(exist_ok=True)
        self.etc_dir.chmod(0o755)
        passwd = sandbox.ETC_PASSWD + "job:x:1000:1000:job:/tmp:/usr/sbin/nologin\n"
        # As a job image's /etc has them (python:3.11-slim does): the host's resolver and CA bundle, so
        # the install container (host network here) can reach PyPI over TLS.
        resolv = Path("/etc/resolv.conf")
        files = {
            **sandbox.etc_files(with_resolv_conf=resolv.read_text() if resolv.is_file() else None),
            "passwd": passwd,
            "group": sandbox.ETC_GROUP + "job:x:1000:\n",
        }
        for name, content in files.items():
            (self.etc_dir / name).write_text(content)
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if bundle.is_file():
            certs = self.etc_dir / "ssl" / "certs"
            certs.mkdir(parents=True, exist_ok=True)
            for directory in (self.etc_dir / "ssl", certs):
                directory.chmod(0o755)
            shutil.copyfile(bundle, certs / "ca-certificates.crt")
            (certs / "ca-certificates.crt").chmod(0o644)

    def __enter__(self) -> NodeAgent:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=10)
        for run in list(self.runs.values()):
            if run.cid and run.proc and run.proc.poll() is None:
                run._kill(run.cid)
        for thread in self.threads:
            thread.join(timeout=30)

    def _loop(self) -> None:
        while not self.stop_flag.is_set():
            with contextlib.suppress(Exception):
                pods = {p["metadata"]["name"]: p for p in self.kube.list("pods")}
                for name, pod in pods.items():
                    if name not in self.runs and pod["spec"].get("runtimeClassName"):
                        run = PodRun(self, pod)
                        self.runs[name] = run
                        thread = threading.Thread(target=self._run_one, args=(run,), daemon=True)
                        self.threads.append(thread)
                        thread.start()
                for name, run in self.runs.items():
                    if name not in pods and not run.deleted.is_set():
                        run.deleted.set()  # deleted by the operator (cancel): stop the sandbox
                        if run.cid and run.proc and run.proc.poll() is None:
                            run._kill(run.cid)
            self.stop_flag.wait(0.2)

    def _run_one(self, run: PodRun) -> None:
        with self.slots:
            run.run()
