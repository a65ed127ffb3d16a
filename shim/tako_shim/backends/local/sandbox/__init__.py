"""The local backend's gVisor sandboxes: ``executor`` (orchestration: one job in one or two runsc
sandboxes), ``job`` (a job's directory, runner config and sandbox watch), ``frames`` (the runner's
authenticated result frame), ``runsc`` (process control), ``journal`` (teardown journal, restart
reaping), ``cgroups`` (v1/v2 limits and OOM), ``oci`` (the pure OCI spec), ``warmpool``
(pre-started single-use sandboxes) and ``unsandboxed`` (the permissive fallback, NO isolation)."""
