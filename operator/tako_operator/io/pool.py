"""The standby-Pod pool at run time: keeps each (namespace, job type) pool full, reserves a ready Pod for
a job, claims it and pushes the job to it. Decisions come from the pure `tako_operator.core.standby`; the
Kubernetes calls go through `tako_operator.io.kube`; the push is one HTTP POST (aiohttp) to the Pod's IP.

Default off: a job type's pool size is `spec.standbyPods` (0 unless set), and nothing here runs for a
type whose size is 0 and that has no standby Pods left.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
import time
from typing import Any

import aiohttp

from tako_operator.core import builders
from tako_operator.core import standby as sb
from tako_operator.core import status as status_mod
from tako_operator.core.plan import waiting_reason
from tako_operator.io import detached
from tako_operator.io.kube import Kube
from tako_operator.settings import PodSettings, StandbySettings
from tako_vm.models.crd import PythonJob, PythonJobTypeSpec

log = logging.getLogger("tako_operator.io.pool")
PoolKey = tuple[str, str]  # (namespace, job type name)
# After a failed push (e.g. a NetworkPolicy that blocks the operator), jobs of that pool go cold for
# this long instead of each one spending a standby Pod and a push timeout.
PUSH_FAILURE_COOLDOWN_SECONDS = 30.0
# A reservation only has to cover the moments between choosing a Pod and its claim patch showing in a
# listing (from then on the claim annotation excludes it); one that outlives a failed pass expires.
RESERVATION_SECONDS = 60.0


async def push(url: str, token: str, body: dict[str, Any], limit_seconds: float) -> str | None:
    """POST the job to a standby runner. None when it accepted it, else why not."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit_seconds)) as session,
            session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response,
        ):
            if response.status == 200:
                return None
            return f"standby runner answered {response.status}: {(await response.text())[:200]}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"push to {url} failed: {exc!r}"


class StandbyPool:
    def __init__(self, kube: Kube, settings: PodSettings, standby: StandbySettings) -> None:
        self.kube = kube
        self.settings = settings
        self.standby = standby
        self.locks: dict[PoolKey, asyncio.Lock] = {}
        self.shared_ready: set[str] = set()  # namespaces whose policy and ConfigMaps exist
        # Pods being handed to a job -> when reserved: not offered again before the API shows the claim.
        self.taken: dict[tuple[str, str], float] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.known: set[PoolKey] = set()  # pools that have (or had) standby Pods
        self.cooling: dict[PoolKey, float] = {}  # pool -> monotonic time its push cooldown ends
        self.dropped: set[tuple[str, str]] = set()  # claimed, push failed, deleted: never adopt them
        # the last known job type of each pool with standby Pods: (spec or None, uid), for the resync
        self.types: dict[PoolKey, tuple[dict[str, Any] | None, str | None]] = {}
        self.resync_task: asyncio.Task[None] | None = None

    # -- keeping pools full ---------------------------------------------------------------------

    async def ensure(
        self, namespace: str, type_name: str, job_type: dict[str, Any] | None, type_uid: str | None
    ) -> None:
        """Make the pool of (namespace, type) match `spec.standbyPods` (0 or a missing type = empty it)."""
        wanted = int((job_type or {}).get("standbyPods") or 0)
        if wanted == 0 and (namespace, type_name) not in self.known:
            return  # the pool is off and never had Pods: no API call (the default)
        self.known.add((namespace, type_name))
        lock = self.locks.setdefault((namespace, type_name), asyncio.Lock())
        async with lock:
            pods = await self.kube.list_pods(namespace, {sb.LABEL_POOL: builders.label_safe(type_name)})
            if wanted == 0 and not pods:
                return
            spec = PythonJobTypeSpec.model_validate(job_type) if job_type else None
            current = sb.spec_hash(namespace, type_name, spec, self.settings, self.standby) if spec else ""
            plan = sb.pool_plan(wanted if spec else 0, pods, current)
            for name in plan.delete:
                await self.kube.delete_pod(namespace, name)
            if plan.create and spec is not None:
                await self._ensure_shared(namespace)
                for _ in range(plan.create):
                    pod = sb.build_standby_pod(
                        namespace,
                        type_name,
                        spec,
                        self.settings,
                        self.standby,
                        token=secrets.token_urlsafe(32),
                        suffix=secrets.token_hex(4),
                        type_uid=type_uid,
                    )
                    await self.kube.create_pod(pod)
            if plan.create or plan.delete:
                log.info(
                    "standby pool %s/%s: %d wanted, created %d, deleted %d",
                    namespace, type_name, wanted, plan.create, len(plan.delete),
                )  # fmt: skip

    async def _ensure_shared(self, namespace: str) -> None:
        """The standby policy before any standby Pod exists (fail closed), and the runner files."""
        if namespace in self.shared_ready:
            return
        await self.kube.create_network_policy(sb.build_standby_policy(namespace, self.standby))
        await self.kube.ensure_shared_configmap(builders.build_runner_configmap(namespace))
        await self.kube.create_configmap(sb.build_standby_configmap(namespace))
        self.shared_ready.add(namespace)

    def saw_standby_pod(self, namespace: str, type_name: str) -> None:
        """A standby Pod of this pool exists (e.g. left by an earlier operator run): manage it."""
        self.known.add((namespace, type_name))

    def refill_soon(
        self, namespace: str, type_name: str, job_type: dict[str, Any] | None, type_uid: str | None
    ) -> None:
        """`ensure` in the background (after a claim: the job's own reconcile does not wait for it)."""
        self.types[(namespace, type_name)] = (job_type, type_uid)
        if self.resync_task is None or self.resync_task.done():
            self.resync_task = detached.spawn(self.resync())
        task = detached.spawn(self.ensure(namespace, type_name, job_type, type_uid))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    async def resync(self) -> None:
        """Forever: every `resync_seconds`, bring every pool that has (or had) standby Pods to its job
        type's size, so a failed refill is retried without waiting for an event (no API call for
        pools that are off and never had Pods)."""
        while True:
            await asyncio.sleep(self.standby.resync_seconds)
            for (namespace, type_name), (job_type, uid) in list(self.types.items()):
                try:
                    await self.ensure(namespace, type_name, job_type, uid)
                except Exception as exc:  # the next round tries again
                    log.warning("standby pool %s/%s: resync failed: %r", namespace, type_name, exc)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("standby pool refill failed: %r", task.exception())

    # -- the job type's status ------------------------------------------------------------------------

    async def report(self, namespace: str, type_name: str, job_type: dict[str, Any]) -> None:
        """Write the PythonJobType's status when it changed: Ready when jobs can use it (valid spec,
        standby pool full), Reconciling while the pool fills, Stalled for an invalid spec or an image
        its standby Pods cannot pull. Types without a pool cost no API call but the first write."""
        raw = (job_type.get("spec") or {}).get("standbyPods")
        wanted = raw if isinstance(raw, int) else 0
        ready, pull_error = 0, None
        if wanted > 0:
            pods = await self.kube.list_pods(namespace, {sb.LABEL_POOL: builders.label_safe(type_name)})
            live = [pod for pod in pods if sb.is_live(pod)]
            ready = sum(1 for pod in live if sb.is_ready(pod))
            pulls = [found for pod in live if (found := waiting_reason(pod)) is not None]
            pull_error = f"{pulls[0][0]}: {pulls[0][1]}".strip(": ") if pulls else None
        now = datetime.datetime.now(datetime.UTC)
        wanted_status = status_mod.job_type_status(job_type, ready, pull_error, now)
        if status_mod.status_changed(job_type.get("status"), wanted_status):
            await self.kube.patch_job_type_status(namespace, type_name, wanted_status)

    # -- claiming ---------------------------------------------------------------------------------

    async def reserve(
        self, namespace: str, type_name: str, job_type: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A ready standby Pod of the type, now reserved for the caller (or None)."""
        if not int(job_type.get("standbyPods") or 0):
            return None
        # keyed by the pool label (what `claim` knows), which differs from the name for long names
        if self.cooling.get((namespace, builders.label_safe(type_name)), 0.0) > time.monotonic():
            return None
        spec = PythonJobTypeSpec.model_validate(job_type)
        current = sb.spec_hash(namespace, type_name, spec, self.settings, self.standby)
        pods = await self.kube.list_pods(namespace, {sb.LABEL_POOL: builders.label_safe(type_name)})
        now = time.monotonic()
        self.taken = {key: at for key, at in self.taken.items() if now - at < RESERVATION_SECONDS}
        exclude = frozenset(name for ns, name in self.taken if ns == namespace)
        chosen = sb.choose(pods, current, exclude)  # no await between choosing and taking
        if chosen is not None:
            self.taken[(namespace, chosen["metadata"]["name"])] = now
        return chosen

    def unreserve(self, namespace: str, pod_name: str) -> None:
        self.taken.pop((namespace, pod_name), None)

    async def claim(self, namespace: str, pod: dict[str, Any], claim: sb.Claim) -> str | None:
        """Claim (resourceVersion precondition), push, release the standby label. None on success,
        else why it failed; a Pod that was claimed but could not take the job is deleted."""
        claimed = await self.kube.merge_patch_pod(namespace, claim.pod_name, claim.patch)
        if claimed is None:
            return f"standby pod {claim.pod_name} was taken or deleted meanwhile"
        url, token = sb.push_url(pod, self.standby), sb.pod_token(pod)
        problem = "the standby pod has no IP or no token"
        if url is not None and token is not None:
            problem = await push(url, token, claim.body, self.standby.push_timeout_seconds) or ""
        if problem:
            pool = str(((pod.get("metadata") or {}).get("labels") or {}).get(sb.LABEL_POOL))
            self.cooling[(namespace, pool)] = time.monotonic() + PUSH_FAILURE_COOLDOWN_SECONDS
            self.dropped.add((namespace, claim.pod_name))
            await self.kube.delete_pod(namespace, claim.pod_name)
            return problem
        await self.kube.merge_patch_pod(namespace, claim.pod_name, sb.release_patch())
        return None

    async def resume(
        self, namespace: str, pod: dict[str, Any], job: dict[str, Any], job_type: dict[str, Any]
    ) -> None:
        """Finish a claim an earlier operator run began (it stopped between the claim and the status
        write). The runner takes one push only, so a refused repeat means the job already has it."""
        if sb.pushed(pod):
            return
        url, token = sb.push_url(pod, self.standby), sb.pod_token(pod)
        if url is not None and token is not None:
            model, type_model = PythonJob.model_validate(job), PythonJobTypeSpec.model_validate(job_type)
            body = sb.push_body(model, type_model, self.settings)
            problem = await push(url, token, body, self.standby.push_timeout_seconds)
            if problem:
                log.info("resuming the claim of %s/%s: %s", namespace, pod["metadata"]["name"], problem)
        await self.kube.merge_patch_pod(namespace, pod["metadata"]["name"], sb.release_patch())
