"""Session execution records on Kubernetes, the pure parts (session_translate.py): the record of a call,
its ConfigMap (name, labels, owner, tenant, size bound) and back, and how they page with PythonJobs."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tako_shim.backends.base import RecordFilter
from tako_shim.backends.kubernetes import session_translate as st
from tako_shim.backends.kubernetes.translate import page_of
from tako_vm.models.sessions import SessionExecution
from tako_vm.models.wire import CODE_MAX_CHARS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_kube_translate import finished_job

SID = "sess-" + "a" * 32
OTHER = "sess-" + "b" * 32
T0 = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)


def session_obj(name: str = SID) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonSession",
        "metadata": {"name": name, "namespace": "ns", "uid": "uid-1"},
        "spec": {"jobType": "science"},
    }


def configmap(number: int, *, tenant: str = "acme", session: str = SID, at: datetime = T0, **kw: Any) -> Any:
    execution = SessionExecution(
        execution_id=st.execution_id_for(session, number),
        session_id=session,
        status=kw.pop("status", "succeeded"),
        result=kw.pop("result", str(number)),
        **kw,
    )
    record = st.execution_record(
        session_obj(session), execution, started_at=at, ended_at=at, idempotency_key=None
    )
    return st.record_configmap(session_obj(session), tenant, record, kw_code(number))


def kw_code(number: int) -> str:
    return f"x = {number}\nx"


def test_a_call_and_its_replay_share_one_id_and_one_record_name() -> None:
    assert st.execution_id_for(SID, 1) == st.execution_id_for(SID, 1)
    assert len({st.execution_id_for(SID, 1), st.execution_id_for(SID, 2), st.execution_id_for(OTHER, 1)}) == 3
    eid = st.execution_id_for(SID, 1)
    assert st.is_execution_id(eid) and not st.is_execution_id("x" + eid) and not st.is_execution_id("a,b")
    name = st.record_name(SID, eid)
    assert name == configmap(1)["metadata"]["name"] and name.startswith(SID) and len(name) <= 253


def test_the_configmap_is_labelled_owned_by_its_session_and_reads_back_for_its_tenant_only() -> None:
    cm = configmap(1, stderr="warn\n", error={"type": "ValueError", "message": "bad", "traceback": "tb"})
    meta = cm["metadata"]
    assert meta["labels"][st.LABEL_SESSION] == SID and meta["labels"][st.LABEL_RECORD] == st.RECORD_KIND
    assert meta["labels"][st.LABEL_EXECUTION] == st.execution_id_for(SID, 1)
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("PythonSession", SID, "uid-1")
    assert owner["blockOwnerDeletion"] is False, "the shim has no finalizers permission on sessions"
    record = st.record_from_configmap(cm, "acme")
    assert record is not None
    assert (record.session_id, record.session_result, record.job_type, record.runtime) == (
        SID, "1", "science", "gvisor"
    )  # fmt: skip
    assert record.error is not None and record.error.type == "ValueError" and record.stderr == "warn\n"
    assert st.record_from_configmap(cm, "other-tenant") is None, "tenants may share a namespace"
    plain = {"metadata": {"name": "x", "annotations": meta["annotations"]}, "data": cm["data"]}
    assert st.record_from_configmap(plain, "acme") is None, "only session-execution ConfigMaps are records"
    corrupt = {**cm, "data": {st.RECORD_KEY: "{not json"}}
    assert st.record_from_configmap(corrupt, "acme") is None


def test_a_huge_output_is_cut_with_a_notice_so_the_record_fits_a_configmap() -> None:
    cm = configmap(1, stdout="é" * 2_000_000, stderr="\x01" * 3_000_000, result="\n" * 2_000_000)
    size = len(cm["data"][st.RECORD_KEY].encode())  # what the API server counts against the 1 MiB
    assert size <= st.RECORD_MAX_BYTES, size
    code_max = 4 * CODE_MAX_CHARS  # with the longest cell, all 4-byte characters
    assert size + code_max < 1_048_576, f"{size} + {code_max} bytes: a ConfigMap holds at most 1 MiB"
    assert len(json.dumps(cm).encode()) < 1_048_576 * 3 // 2, "under etcd's object limit too"
    record = st.record_from_configmap(cm, "acme")
    assert record is not None and record.stdout_truncated and record.stderr_truncated
    assert "truncated: the execution record keeps" in record.stdout
    small = st.record_from_configmap(configmap(2, stdout="ok\n"), "acme")
    assert small is not None and small.stdout == "ok\n" and not small.stdout_truncated


def test_records_of_checks_session_and_execution_even_if_the_selector_was_ignored() -> None:
    items = [configmap(1), configmap(2), configmap(1, session=OTHER), configmap(3, tenant="evil")]
    assert len(st.records_of(items, "acme", None, None)) == 3
    assert {r.session_id for r, _ in st.records_of(items, "acme", SID, None)} == {SID}
    one = st.records_of(items, "acme", None, st.execution_id_for(SID, 2))
    assert [(r.session_result, code) for r, code in one] == [("2", "x = 2\nx")]
    assert st.record_selector(SID) == f"{st.RECORD_SELECTOR},{st.LABEL_SESSION}={SID}"


def test_session_records_page_newest_first_mixed_with_jobs() -> None:
    jobs = [
        finished_job("job-1", created="2026-01-01T00:00:04Z"),
        finished_job("job-2", created="2026-01-01T00:00:07Z"),
    ]
    records = [
        r
        for n, offset in ((1, 0.1), (2, 0.6), (3, 5.0))  # two calls in one second still order
        for r, _ in st.records_of([configmap(n, at=T0 + timedelta(seconds=offset))], "acme", None, None)
    ]
    page = page_of(jobs, RecordFilter(), records)
    assert [r.session_result or r.execution_id for r in page.records] == ["3", "job-2", "2", "1", "job-1"]
    only = page_of(jobs, RecordFilter(session_id=SID, limit=2), records)
    assert [r.session_result for r in only.records] == ["3", "2"] and only.has_more
    assert page_of(jobs, RecordFilter(status="failed"), records).records == []
    assert len(page_of(jobs, RecordFilter(job_type="science"), records).records) == 3


@pytest.mark.parametrize(
    ("job_type", "expected"),
    [
        ({"spec": {"startupTimeoutSeconds": 600}}, 600),  # a slow image: wait as long as the operator
        ({"spec": {"startupTimeoutSeconds": 30}}, 30),
        ({"spec": {}}, 120),  # the type says nothing: the shim's default
        (None, 120),  # the type is gone: the default (the operator ends the session anyway)
        ({"spec": {"startupTimeoutSeconds": True}}, 120),
    ],
)
def test_a_session_is_waited_for_as_long_as_its_job_type_may_start(
    job_type: dict[str, Any] | None, expected: int
) -> None:
    assert st.startup_timeout(job_type, 120) == expected
