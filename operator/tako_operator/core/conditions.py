"""PythonJob phases and condition types, named once (pure; the model is agent-sandbox's conditions file).

The conditions follow the kstatus conventions (sigs.k8s.io/cli-utils/pkg/kstatus) and the Kubernetes API
conventions, so that `kubectl wait`, Flux (`wait: true`), Argo CD and dashboards read a job correctly:

- `Reconciling` and `Stalled` are "abnormal-true": present (status True) only while they apply, absent
  otherwise. Reconciling=True while the job is queued or runs; Stalled=True once it ended in anything
  but success (failed, timeout, OOM, cancelled), with the phase as its reason. kstatus: InProgress /
  Failed.
- `Ready` is True only for a job that succeeded; False for every other state (so `kubectl wait
  --for=condition=Ready` never reports success for a failed job).
- `Finished` is True once the job ended, whatever the outcome: `kubectl wait --for=condition=Finished`
  waits for the end without hanging on a failed job. `Succeeded` / `Failed` say how it ended.
- `Admitted` is False while the job waits for a concurrency slot.
Every condition carries `observedGeneration`, as does `status.observedGeneration`.
"""

from __future__ import annotations

from tako_vm.models.crd import TERMINAL_PHASES

# --- phases ---------------------------------------------------------------------------------------
PENDING = "Pending"
QUEUED = "Queued"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TIMEOUT = "Timeout"
OOM = "OOM"
CANCELLED = "Cancelled"

FAILURE_PHASES = frozenset({FAILED, TIMEOUT, OOM})  # Failed=True (a cancelled job did not fail)
STALLED_PHASES = frozenset({FAILED, TIMEOUT, OOM, CANCELLED})  # every end but success
ADMITTED_PHASES = frozenset({PENDING, RUNNING, *TERMINAL_PHASES})

# --- condition types ------------------------------------------------------------------------------
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
FINISHED = "Finished"
SUCCEEDED_CONDITION = "Succeeded"
FAILED_CONDITION = "Failed"
ADMITTED = "Admitted"
ABNORMAL_TRUE = frozenset({RECONCILING, STALLED})  # written only while True

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"

Condition = tuple[str, str, str, str]  # (type, status, reason, message)


def job_conditions(phase: str, message: str) -> list[Condition]:
    """The conditions of a PythonJob in `phase`, in the order they are written (Reconciling/Stalled
    only when True). The reason is the phase. Ready and Reconciling/Stalled carry the job's message
    (what kubectl, kstatus and Argo CD show); the others a short one (status.message has it in full,
    and the etcd budget in docs/crds.md counts every copy)."""
    terminal = phase in TERMINAL_PHASES
    ended = f"Ended: {phase}" if terminal else "Not finished"
    out: list[Condition] = [(READY, TRUE if phase == SUCCEEDED else FALSE, phase, message)]
    if not terminal:
        out.append((RECONCILING, TRUE, phase, message))
    elif phase in STALLED_PHASES:
        out.append((STALLED, TRUE, phase, message))
    out.append((FINISHED, TRUE if terminal else FALSE, phase, ended))
    if phase == SUCCEEDED:
        out.append((SUCCEEDED_CONDITION, TRUE, phase, ended))
    else:
        out.append((SUCCEEDED_CONDITION, FALSE if terminal else UNKNOWN, phase, ended))
    out.append((FAILED_CONDITION, TRUE if phase in FAILURE_PHASES else FALSE, phase, ended))
    if phase == QUEUED:
        out.append((ADMITTED, FALSE, QUEUED, "Waiting for a free slot"))
    elif phase in ADMITTED_PHASES:
        out.append((ADMITTED, TRUE, "Admitted", "Admitted to run"))
    else:
        out.append((ADMITTED, UNKNOWN, phase, "Not yet admitted"))
    return out


# --- PythonJobType --------------------------------------------------------------------------------
SPEC_INVALID = "InvalidSpec"
IMAGE_PULL_FAILED = "ImagePullFailed"
POOL_FILLING = "PoolFilling"
POOL_READY = "PoolReady"
ACCEPTED = "Accepted"


def job_type_conditions(
    problem: str | None, wanted: int, ready: int, pull_error: str | None
) -> list[Condition]:
    """A PythonJobType is Ready when jobs can use it: its spec is valid, and its standby pool (if it
    has one) is full. Stalled=True when it cannot become usable without a change (an invalid spec, an
    image its standby Pods cannot pull); Reconciling=True while the pool fills."""
    if problem is not None:
        return [(READY, FALSE, SPEC_INVALID, problem), (STALLED, TRUE, SPEC_INVALID, problem)]
    if pull_error is not None:
        return [(READY, FALSE, IMAGE_PULL_FAILED, pull_error), (STALLED, TRUE, IMAGE_PULL_FAILED, pull_error)]
    if wanted == 0:
        return [(READY, TRUE, ACCEPTED, "Jobs of this type get their Pods on demand")]
    if ready < wanted:
        text = f"{ready} of {wanted} standby Pods ready"
        return [(READY, FALSE, POOL_FILLING, text), (RECONCILING, TRUE, POOL_FILLING, text)]
    return [(READY, TRUE, POOL_READY, f"{ready} of {wanted} standby Pods ready")]
