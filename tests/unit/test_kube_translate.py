"""Pure REST <-> PythonJob translation (tako_shim.backends.kubernetes.translate), without any API server."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from tako_shim.backends.base import RecordFilter, Submission
from tako_shim.backends.kubernetes.translate import (
    ANNOTATION_FINGERPRINT,
    ClusterJobResolver,
    code_ref,
    count_active,
    fingerprint_of,
    is_job_name,
    job_name,
    job_object,
    job_type_selector,
    job_types_from_objects,
    namespace_for,
    page_of,
    record_from_job,
    status_from_job,
    submission_from_job,
    unknown_job_type,
)
from tako_shim.config import KubernetesOptions, Settings
from tako_shim.errors import InvalidRequest
from tako_shim.submission import JobResolver
from tako_vm.models.crd import Phase, PythonJob, PythonJobStatus
from tako_vm.models.wire import ExecuteRequest, ExecutionRecordFull


def submission(**overrides: Any) -> Submission:
    fields: dict[str, Any] = {
        "code": "print('hi')",
        "input_data": {"n": 1},
        "job_type": "default",
        "timeout": 30,
        "startup_timeout": 120,
    }
    return Submission(**{**fields, **overrides})


def finished_job(name: str = "job-1", created: str = "2026-01-01T00:00:00Z", **status: Any) -> dict[str, Any]:
    body = job_object(name, "ns", "default", submission())
    body["metadata"]["creationTimestamp"] = created
    base = {
        "phase": "Succeeded",
        "exitCode": 0,
        "stdout": "hi\n",
        "stderr": "",
        "stdoutTruncated": True,
        "output": {"a": 1},
        "timing": {"startupMs": 5, "executionMs": 10, "totalMs": 15, "phaseAtExit": "completed"},
        "artifacts": [{"name": "r.txt", "sizeBytes": 3, "sha256": "a" * 64, "contentType": "text/plain"}],
        "runtime": "gvisor",
        "startedAt": "2026-01-01T00:00:01Z",
        "finishedAt": "2026-01-01T00:00:03.5Z",
    }
    body["status"] = {**base, **status}
    PythonJobStatus.model_validate(body["status"])  # the fixture is a status the CRD allows
    return body


def test_tenant_is_a_namespace() -> None:
    options = KubernetesOptions(namespace="tako-vm", tenant_namespaces={"acme": "team-acme"})
    assert namespace_for("default", options) == "tako-vm"
    assert namespace_for("acme", options) == "team-acme"
    assert namespace_for("globex", options) == "globex"


def test_names_from_idempotency_keys_are_deterministic_and_scoped_per_tenant() -> None:
    assert job_name("a", "order-12345") == job_name("a", "order-12345")
    assert job_name("a", "order-12345") != job_name("b", "order-12345")
    assert job_name("a", "order-12345") != job_name("a", "order-12346")
    assert job_name("a", None) != job_name("a", None)
    for name in (job_name("a", "k" * 128), job_name("a", None)):
        assert is_job_name(name) and len(name) == 36


@pytest.mark.parametrize("value", ["", "UPPER", "a_b", "..", "-a", "a" * 254, "a/b", "a\x00"])
def test_anything_that_cannot_name_an_object_is_rejected_before_the_api(value: str) -> None:
    assert not is_job_name(value)


def test_job_object_carries_the_submission_labels_and_annotations() -> None:
    sub = submission(
        requirements=["numpy==1.26"],
        idempotency_key="order-12345",
        fingerprint="f" * 64,
        correlation_id="corr-1",
    )
    body = job_object("n1", "ns", "acme", sub)
    job = PythonJob.model_validate(body)  # a valid PythonJob by the CRD's model
    assert job.name == "n1" and job.namespace == "ns"
    assert job.spec.code == "print('hi')" and job.spec.input_data == {"n": 1}
    assert job.spec.timeout_seconds == 30 and job.spec.startup_timeout_seconds == 120
    assert job.spec.requirements == ["numpy==1.26"] and job.spec.idempotency_key == "order-12345"
    assert body["spec"]["jobType"] == "default" and "cancel" not in body["spec"]
    assert body["metadata"]["labels"]["takovm.dev/job-type"] == "default"
    assert body["metadata"]["annotations"][ANNOTATION_FINGERPRINT] == "f" * 64
    assert body["metadata"]["annotations"]["takovm.dev/tenant"] == "acme"
    assert fingerprint_of(body) == "f" * 64


def test_lineage_is_written_for_reruns_and_forks() -> None:
    body = job_object("n", "ns", "t", submission(parent_execution_id="parent-1", relationship="fork"))
    assert body["spec"]["parentJob"] == "parent-1" and body["spec"]["relationship"] == "fork"


def test_a_job_type_the_crd_cannot_hold_is_a_422_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        job_object("n", "ns", "t", submission(job_type="Data_Science"))
    assert caught.value.detail.startswith("job_type:") and "DNS label" in caught.value.detail


# Written out here, not read from the table the code uses (CONTRACT_STATUS_BY_PHASE): a wrong entry there
# must fail this test. (record status, GET /jobs/{id} status) for every phase of the CRD.
EXPECTED_STATUS_BY_PHASE = {
    "Pending": ("queued", "pending"),
    "Queued": ("queued", "pending"),
    "Running": ("running", "running"),
    "Succeeded": ("succeeded", "succeeded"),
    "Failed": ("failed", "failed"),
    "Timeout": ("timeout", "timeout"),
    "OOM": ("oom", "oom"),
    "Cancelled": ("cancelled", "cancelled"),
}


def test_the_expected_table_covers_every_phase_of_the_crd() -> None:
    assert set(EXPECTED_STATUS_BY_PHASE) == set(get_args(Phase))


@pytest.mark.parametrize(("phase_name", "expected"), sorted(EXPECTED_STATUS_BY_PHASE.items()))
def test_every_phase_maps_to_the_contract_status(phase_name: str, expected: tuple[str, str]) -> None:
    job = finished_job(phase=phase_name)
    assert (record_from_job(job).status, status_from_job(job).status) == expected


def test_a_job_the_operator_has_not_seen_yet_is_queued() -> None:
    no_status = job_object("n", "ns", "t", submission())
    job = {**no_status, "metadata": {**no_status["metadata"], "creationTimestamp": "x"}}
    assert (record_from_job(job).status, status_from_job(job).status) == ("queued", "pending")


def test_record_from_a_finished_job() -> None:
    record = record_from_job(finished_job())
    ExecutionRecordFull.model_validate(record.model_dump())
    assert record.execution_id == "job-1" and record.status == "succeeded"
    assert record.stdout == "hi\n" and record.stdout_truncated and not record.stderr_truncated
    assert record.output == {"a": 1} and record.exit_code == 0 and record.runtime == "gvisor"
    assert record.duration_ms == 2500
    assert record.created_at == "2026-01-01T00:00:00+00:00"
    assert record.timing is not None and record.timing.execution_ms == 10
    assert record.timing.phase_at_exit == "completed"
    assert [a.name for a in record.artifacts] == ["r.txt"] and record.artifacts[0].size_bytes == 3
    assert record.job_version == "default@latest" and record.code_hash and record.input_hash
    assert record.slim().model_dump().keys() <= set(record.model_dump())


def test_record_of_a_failure_keeps_the_error() -> None:
    job = finished_job(
        phase="Failed",
        exitCode=1,
        stdout="",
        stderr="NameError: x",
        error={"type": "name_error", "message": "NameError: x", "phase": "execution"},
    )
    record = record_from_job(job)
    assert record.status == "failed" and record.error is not None
    assert (record.error.type, record.error.phase) == ("name_error", "execution")


def test_status_reads_pending_for_queued_jobs_and_carries_duration_when_done() -> None:
    queued = finished_job(phase="Queued")
    queued["status"] = {"phase": "Queued"}
    assert status_from_job(queued).status == "pending" and status_from_job(queued).duration_ms is None
    done = status_from_job(finished_job())
    assert done.status == "succeeded" and done.duration_ms == 2500 and done.job_id == "job-1"


def test_submission_round_trip_and_kubectl_defaults() -> None:
    resolver = JobResolver(Settings())
    original = resolver.resolve(ExecuteRequest(code="print(2)", input_data={"k": [1]}, timeout=12))
    body = job_object("n", "ns", "t", original)
    again = submission_from_job(body, code="print(2)", default_timeout=30, default_startup_timeout=120)
    assert (again.code, again.input_data, again.timeout, again.startup_timeout, again.job_type) == (
        "print(2)",
        {"k": [1]},
        12,
        original.startup_timeout,
        "default",
    )
    kubectl_job = {"metadata": {"name": "x"}, "spec": {"code": "print(3)"}}
    defaults = submission_from_job(
        kubectl_job, code="print(3)", default_timeout=30, default_startup_timeout=99
    )
    assert (defaults.timeout, defaults.startup_timeout, defaults.input_data) == (30, 99, {})


def test_history_is_newest_first_filtered_and_paged() -> None:
    jobs = [finished_job(f"job-{n}", created=f"2026-01-01T00:00:0{n}Z") for n in range(5)]
    jobs[1]["status"] = {"phase": "Running"}
    jobs[2]["spec"]["jobType"] = "science@v2"
    page = page_of(jobs, RecordFilter(limit=2))
    assert [r.execution_id for r in page.records] == ["job-4", "job-3"] and page.has_more
    last = page_of(jobs, RecordFilter(limit=2, offset=4))
    assert [r.execution_id for r in last.records] == ["job-0"] and not last.has_more
    assert [r.execution_id for r in page_of(jobs, RecordFilter(status="running")).records] == ["job-1"]
    assert [r.execution_id for r in page_of(jobs, RecordFilter(job_type="science")).records] == ["job-2"]
    assert count_active(jobs) == (0, 1)
    assert (
        job_type_selector("science@v2") == "takovm.dev/job-type=science" and job_type_selector(None) is None
    )


def job_type_object(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJobType",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"image": "registry.example/ds:1", **spec},
    }


def test_job_types_are_the_namespaces_pythonjobtypes_and_the_builtin_default() -> None:
    science = job_type_object(
        "science",
        requirements=["pandas==2.2.3"],
        pythonVersion="3.12",
        resources={"memory": "2Gi", "cpu": "500m"},
        timeoutSeconds=300,
        startupTimeoutSeconds=60,
        allowRuntimeRequirements=True,
    )
    broken = job_type_object("broken", timeoutSeconds=0)  # the CRD would refuse it; so does the shim
    types = job_types_from_objects([science, job_type_object("alpha"), broken])
    assert [t.name for t in types] == ["default", "alpha", "science"]
    default, alpha, sci = types
    assert (default.timeout, default.startup_timeout, default.memory_limit) == (30, 120, "512m")
    assert default.requirements == [] and default.cpu_limit == 1.0
    assert sci.requirements == ["pandas==2.2.3"] and sci.python_version == "3.12"
    assert (sci.memory_limit, sci.cpu_limit, sci.timeout, sci.startup_timeout) == ("2g", 0.5, 300, 60)
    assert sci.network_enabled is False, "user code never has a network, runtime installs or not"
    assert alpha.memory_limit == "512m" and alpha.timeout == 30


def test_a_namespace_may_redefine_default() -> None:
    own = job_type_object("default", timeoutSeconds=90, resources={"memory": "1500M"})
    [default] = job_types_from_objects([own])
    assert default.timeout == 90 and default.memory_limit == "1500m"
    odd = job_type_object("default", resources={"memory": "1.5Gi"})
    assert job_types_from_objects([odd])[0].memory_limit == "1.5Gi", "kept as is when it does not map"


def test_the_cluster_resolver_lets_any_type_through_with_the_shims_defaults() -> None:
    settings = Settings(default_timeout=45, default_startup_timeout=90, job_types=[{"name": "configured"}])
    resolver = ClusterJobResolver(settings)
    sub = resolver.resolve(ExecuteRequest(code="print(1)", job_type="science@v2"))
    assert (sub.job_type, sub.timeout, sub.startup_timeout, sub.requirements) == ("science", 45, 90, [])
    assert resolver.resolve(ExecuteRequest(code="print(1)", timeout=7)).timeout == 7
    with pytest.raises(InvalidRequest, match="max_timeout"):
        resolver.resolve(ExecuteRequest(code="print(1)", timeout=settings.max_timeout + 1))
    error = unknown_job_type("nope", ["science", "default"])
    assert (
        error.status == 422
        and str(error) == "job_type: unknown job type 'nope' (available: default, science)"
    )


def test_a_rerun_of_configmap_code_points_at_the_same_configmap() -> None:
    parent = job_object("p", "ns", "t", submission())
    del parent["spec"]["code"]
    parent["spec"]["codeRef"] = {"name": "my-code", "key": "job.py"}
    ref = code_ref(parent)
    assert ref == ("my-code", "job.py")
    derived = submission(code="", parent_execution_id="p", relationship="rerun")
    body = job_object("child", "ns", "t", derived, code_ref=ref)
    job = PythonJob.model_validate(body)  # valid by the CRD's model: exactly one code source
    assert "code" not in body["spec"] and body["spec"]["codeRef"] == {"name": "my-code", "key": "job.py"}
    assert job.spec.parent_job == "p" and job.spec.relationship == "rerun"
    assert code_ref(job_object("n", "ns", "t", submission())) is None
