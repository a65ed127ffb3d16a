"""Mutation check of the guards that matter: neutralise each guard, run its tests, expect a failure.

For every mutation below the script replaces one exact snippet of the source (the guard) with a
neutralised version, runs the listed tests, records whether they failed, and restores the file (always,
also on Ctrl-C). A mutation whose tests still pass is a guard no test protects: the script exits 1.

    .venv/bin/python scripts/mutate_guards.py            # all (a few minutes: some need real runsc)
    .venv/bin/python scripts/mutate_guards.py auth-      # the ids starting with "auth-"

The results are in docs/SECURITY.md ("Mutation check of the guards"). Run it from the repository root
with runsc on PATH (export PATH=$PWD/.tools/bin:$PATH).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    guard: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MIDDLEWARE = "shim/tako_shim/http/middleware.py"
STORE = "shim/tako_shim/backends/local/store.py"
LOCAL = "shim/tako_shim/backends/local/backend.py"
KUBE = "shim/tako_shim/backends/kubernetes/backend.py"
SANDBOX_ARTIFACTS = "shim/tako_shim/backends/local/sandbox/artifacts.py"
FRAMES = "shim/tako_shim/backends/local/sandbox/frames.py"
REFUSE = '        raise Unauthorized(UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})\n'
FAIL_CLOSED = "  # only the auth-exempt paths have no tenant, and they never get here: fail closed\n"
ARTIFACT_GUARD = 'if not name or "/" in name or "\\\\" in name or name in {".", ".."} or "\\x00" in name:'

MUTATIONS = [
    Mutation(
        "auth-unknown-key",
        "an unknown or missing API key is refused (401)",
        MIDDLEWARE,
        "    if tenant is None:\n" + REFUSE + "    request[TENANT_KEY] = tenant",
        "    if tenant is None:\n        tenant = DEFAULT_TENANT\n    request[TENANT_KEY] = tenant",
        ("tests/integration/test_shim_auth.py::test_missing_or_wrong_key_is_401_with_www_authenticate",),
    ),
    Mutation(
        "auth-key-compare",
        "a key maps to a tenant only when it matches exactly",
        MIDDLEWARE,
        "        if hmac.compare_digest(presented, candidate.encode()):",
        "        if presented:",
        ("tests/unit/test_shim_middleware.py::test_tenant_lookup_is_exact",),
    ),
    Mutation(
        "auth-handler-fail-closed",
        "a handler reached without a tenant refuses (fail closed)",
        "shim/tako_shim/http/common.py",
        "    if tenant is None:" + FAIL_CLOSED + REFUSE,
        "",
        ("tests/unit/test_shim_http_layer.py",),
    ),
    Mutation(
        "tenant-get",
        "a job is read only by its tenant",
        STORE,
        'f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? AND job_id = ?", (tenant, job_id)',
        'f"SELECT {_COLUMNS} FROM jobs WHERE (tenant = ? OR 1) AND job_id = ?", (tenant, job_id)',
        ("tests/integration/test_shim_auth.py::test_tenants_never_see_or_touch_each_others_jobs",),
    ),
    Mutation(
        "tenant-list",
        "history lists only the tenant's jobs",
        STORE,
        'clauses, params = ["tenant = ?"], [tenant]',
        'clauses, params = ["(tenant = ? OR 1)"], [tenant]',
        ("tests/integration/test_shim_auth.py::test_tenants_never_see_or_touch_each_others_jobs",),
    ),
    Mutation(
        "tenant-idempotency",
        "idempotency keys are per tenant",
        STORE,
        'f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? AND idempotency_key = ?", (tenant, key)',
        'f"SELECT {_COLUMNS} FROM jobs WHERE (tenant = ? OR 1) AND idempotency_key = ?", (tenant, key)',
        (
            "tests/unit/test_shim_queue.py::test_idempotency_is_per_tenant_and_conflicts_on_a_different_payload",
        ),
    ),
    Mutation(
        "tenant-namespace",
        "the kubernetes backend keeps each tenant in its own namespace",
        "shim/tako_shim/backends/kubernetes/translate.py",
        "    return options.namespace if tenant == DEFAULT_TENANT else tenant",
        "    return options.namespace",
        ("tests/unit/test_kube_translate.py",),
    ),
    Mutation(
        "artifact-name-local",
        "an artifact name with a path, '..' or NUL is a 400 (local backend)",
        LOCAL,
        ARTIFACT_GUARD,
        "if False:",
        ("tests/security/test_hostile_input.py::test_artifact_names_cannot_escape_the_jobs_output",),
    ),
    Mutation(
        "artifact-name-kubernetes",
        "an artifact name with a path, '..' or NUL is a 400 (kubernetes backend)",
        KUBE,
        ARTIFACT_GUARD,
        "if False:",
        ("tests/unit/test_kube_backend_guards.py",),
    ),
    Mutation(
        "artifact-name-write",
        "the executor writes no artifact whose name has a path or starts with '.'",
        SANDBOX_ARTIFACTS,
        '    if "/" in name or "\\\\" in name or "\\0" in name or not name.isprintable():',
        "    if False:",
        ("tests/sandbox/test_executor_helpers.py",),
    ),
    Mutation(
        "requirements-shim",
        "requirements are plain name[extras] op version specs (REST, both backends)",
        "shim/tako_shim/submission.py",
        "        if len(entry) > 256 or not _REQUIREMENT_RE.match(entry.strip()):",
        "        if False:",
        ("tests/unit/test_shim_middleware.py::test_requirement_specifiers_are_plain_names_and_versions",),
    ),
    Mutation(
        "requirements-runner",
        "the runner re-checks every requirement before pip sees it",
        "runner/tako_runner/runner.py",
        "        if not REQUIREMENT_RE.match(entry.strip()) or entry != entry.strip():",
        "        if False:",
        ("tests/sandbox/test_requirements.py::test_bad_requirement_is_rejected_naming_the_entry",),
    ),
    Mutation(
        "requirements-crd",
        "the PythonJob model refuses a bad requirement",
        "client/tako_vm/models/crd.py",
        "    str, Field(min_length=1, max_length=REQUIREMENT_MAX_CHARS, pattern=REQUIREMENT_PATTERN)",
        "    str, Field(min_length=1, max_length=REQUIREMENT_MAX_CHARS)",
        ("tests/unit/test_crd_schema.py",),
    ),
    Mutation(
        "envelope-mac",
        "the local executor trusts a frame only with the runner's HMAC",
        FRAMES,
        "    if not hmac.compare_digest(expected, parts[2]):\n        return None\n",
        "",
        ("tests/sandbox/test_forgery.py",),
    ),
    Mutation(
        "envelope-sha256",
        "a frame whose body does not match its sha256 is ignored",
        "runner/tako_runner/outcome.py",
        "        if hashlib.sha256(raw).hexdigest() != match.group(2):",
        "        if False:",
        ("tests/unit/test_outcome.py",),
    ),
]


def run(mutation: Mutation) -> tuple[bool, float, str]:
    path = ROOT / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.id}: the guard is not found exactly once in {mutation.path}")
    started = time.monotonic()
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", *mutation.tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(original)
    if result.returncode not in (0, 1):
        raise SystemExit(
            f"{mutation.id}: pytest could not run ({result.returncode}):\n{result.stdout[-2000:]}"
        )
    failed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("FAILED ")]
    return result.returncode == 1, time.monotonic() - started, failed[0].split("[")[0] if failed else ""


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not argv or any(m.id.startswith(a) for a in argv)]
    survivors = []
    print("| Guard | Mutation id | Neutralised in | Test that fails without it |")
    print("|---|---|---|---|")
    for mutation in chosen:
        caught, seconds, failing = run(mutation)
        if not caught:
            survivors.append(mutation.id)
        verdict = f"`{failing}` ({seconds:.0f} s)" if caught else f"**none** of {', '.join(mutation.tests)}"
        print(f"| {mutation.guard} | {mutation.id} | `{mutation.path}` | {verdict} |")
        sys.stdout.flush()
    if survivors:
        print(f"guards no test protects: {survivors}", file=sys.stderr)
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
