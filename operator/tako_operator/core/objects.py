"""Adapter between the operator's plain-dict world and the pure builders (builders.py).

The builders take the pydantic CRD models; the handlers hold watch bodies (dicts). This module
converts, resolves the job type (a PythonJobType object, or the built-in default), and answers the
naming questions the reconciler asks (which Pod is attempt N, which objects does a job own).
Pure: no kopf, no Kubernetes client.
"""

from __future__ import annotations

from typing import Any

from tako_operator.core import builders
from tako_operator.settings import PodSettings
from tako_vm.models.crd import DEFAULT_JOB_TYPE, DEFAULT_JOB_TYPE_NAME, PythonJob, PythonJobTypeSpec


def job_model(job: dict[str, Any]) -> PythonJob:
    return PythonJob.model_validate(job)


def job_type_name(job: dict[str, Any]) -> str:
    spec = job.get("spec") or {}
    ref = str(spec.get("jobType") or DEFAULT_JOB_TYPE_NAME)
    return ref.split("@", 1)[0]


def resolve_job_type(
    name: str, found: dict[str, Any] | None, default_image: str | None = None
) -> dict[str, Any] | None:
    """The job type's spec (camelCase dict); the built-in default when `default` is not defined;
    None when the job names a type that does not exist."""
    if found is not None:
        spec = PythonJobTypeSpec.model_validate(found.get("spec") or {})
        return spec.model_dump(by_alias=True, exclude_none=True)
    if name == DEFAULT_JOB_TYPE_NAME:
        spec = (
            DEFAULT_JOB_TYPE.model_copy(update={"image": default_image})
            if default_image
            else DEFAULT_JOB_TYPE
        )
        return spec.model_dump(by_alias=True, exclude_none=True)
    return None


def _type_model(job_type: dict[str, Any]) -> PythonJobTypeSpec:
    return PythonJobTypeSpec.model_validate(job_type)


def attempt_objects(
    job: dict[str, Any], job_type: dict[str, Any], settings: PodSettings, attempt: int
) -> list[dict[str, Any]]:
    """Everything attempt `attempt` needs, in creation order: the runner and code ConfigMaps, the
    policies (deny-all first, so the Pod never exists without it), then the Pod. Raises
    builders.JobRejected naming the field when the job cannot be built."""
    model = job_model(job)
    type_model = _type_model(job_type)
    pod = builders.build_pod(model, type_model, settings, attempt)
    objs: list[dict[str, Any]] = [
        builders.build_runner_configmap(model.namespace),
        builders.build_code_configmap(model, type_model, settings),
        builders.build_deny_all_policy(model),
    ]
    if model.spec.requirements:
        objs.append(builders.build_install_egress_policy(model, settings))
    objs.append(pod)
    return objs


def pod_name(job: dict[str, Any], attempt: int) -> str:
    return builders.pod_name(job_model(job), attempt)


def install_policy_name(job: dict[str, Any]) -> str:
    return builders.install_policy_name(job_model(job))


def owned_configmap_names(job: dict[str, Any]) -> list[str]:
    return [builders.code_configmap_name(job_model(job))]


def owned_policy_names(job: dict[str, Any]) -> list[str]:
    model = job_model(job)
    return [builders.deny_policy_name(model), builders.install_policy_name(model)]
