#!/usr/bin/env bash
# Makes the reference Tako VM 0.3.0 (PyPI `tako-vm==0.3.0`: FastAPI server, one `docker run` of an
# executor image per job, PostgreSQL for job records) runnable on this machine, for the side-by-side
# benchmark `python -m bench --only reference` (bench/reference.py, docs/performance.md). Idempotent:
# each step is skipped when its result exists. Root; Debian (apt-get); no Docker engine and no systemd
# needed:
#
# - apt-get: podman (+ conmon, crun), catatonit (podman's `--init`), gosu, postgresql-15 (we run our own
#   cluster, below);
# - /var/lib/tako-ref/etc/{containers,storage}.conf: podman with cgroup_manager "cgroupfs",
#   events_logger "file", overlay storage under /var/lib/tako-ref/storage, and runsc (.tools/bin/runsc,
#   the same binary our server uses, through a wrapper adding --network=none) registered as the OCI
#   runtime "runsc" and made podman's default (podman 4.3's compat API ignores `docker run --runtime`);
# - the executor image `code-executor:latest` (the reference's default name), imported offline with
#   `podman import` from our sandboxes' root filesystem (scripts/build-rootfs.sh: Debian bookworm +
#   python3) plus gosu, a `sandbox` user (uid 1000), `python` -> python3, and an /entrypoint.sh of ours
#   that honours the reference's executor contract (phase file in /tako-meta or /output, in-container
#   timeout, privileges dropped with gosu, `python -u /code/main.py`); the reference's own
#   Dockerfile.executor is not shipped in its wheel or sdist, and this image does not install uv (so
#   runtime requirements are not supported: print(1) needs none);
# - the reference in its own venv, .tools/reference-venv (both projects are `import tako_vm`);
# - a PostgreSQL 15 cluster in /var/lib/tako-ref/pgdata (trust auth, loopback, port 55432), database
#   tako_vm;
# - /var/lib/tako-ref/tako_vm.yaml: runtime runsc, strict mode, that database, rate limit off.
#
# Nothing is left running: bench/reference.py starts postgres, `podman system service` (the docker
# CLI's DOCKER_HOST socket) and the reference server itself, so that their CPU is counted. To try the
# reference by hand: `scripts/setup-reference.sh --start` starts postgres and the podman service in the
# background (stop them with --stop), then
#   DOCKER_HOST=unix:///run/tako-ref/podman.sock TAKO_VM_CONFIG=/var/lib/tako-ref/tako_vm.yaml \
#     .tools/reference-venv/bin/tako-vm server --no-auto-start-postgres --port 8077
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state=/var/lib/tako-ref
run=/run/tako-ref
venv="$root/.tools/reference-venv"
runsc="$root/.tools/bin/runsc"
pgbin=/usr/lib/postgresql/15/bin
pgport=55432
image=code-executor:latest
say() { echo "setup-reference: $*"; }
export PATH="$PATH:/usr/sbin:/sbin"
export CONTAINERS_CONF="$state/etc/containers.conf" CONTAINERS_STORAGE_CONF="$state/etc/storage.conf"

if [ "$(id -u)" != 0 ]; then
    say "must run as root" >&2
    exit 1
fi

start() {
    mkdir -p "$run"
    chown postgres "$run"
    if ! su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $state/pgdata status" >/dev/null 2>&1; then
        su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $state/pgdata -l $state/pgdata/server.log -w start \
            -o '-p $pgport -k $run -c listen_addresses=127.0.0.1'" >/dev/null
    fi
    if [ ! -S "$run/podman.sock" ] || ! DOCKER_HOST="unix://$run/podman.sock" docker version >/dev/null 2>&1; then
        rm -f "$run/podman.sock"
        nohup podman system service --time=0 "unix://$run/podman.sock" >"$state/podman.log" 2>&1 &
        echo $! >"$run/podman.pid"
        for _ in $(seq 50); do [ -S "$run/podman.sock" ] && break; sleep 0.1; done
    fi
    say "running: postgres on 127.0.0.1:$pgport, podman service on unix://$run/podman.sock"
}

stop() {
    [ -f "$run/podman.pid" ] && kill "$(cat "$run/podman.pid")" 2>/dev/null || true
    rm -f "$run/podman.pid"
    su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $state/pgdata -m fast stop" >/dev/null 2>&1 || true
    say "stopped"
}

case "${1:-}" in
    --start) start; exit 0 ;;
    --stop) stop; exit 0 ;;
    "") ;;
    *) say "usage: $0 [--start|--stop]" >&2; exit 2 ;;
esac

# 1. packages
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v gosu >/dev/null 2>&1 || need+=(gosu)
[ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)  # docker run --init
[ -x "$pgbin/postgres" ] || need+=(postgresql-15)
command -v docker >/dev/null 2>&1 || need+=(docker.io)  # only its CLI is used; normally present already
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x "$runsc" ] || { say "no $runsc: run make setup first" >&2; exit 1; }

# 2. podman configuration (private: only processes started with CONTAINERS_CONF see it)
mkdir -p "$state/etc" "$state/storage" "$run"
cat >"$state/etc/containers.conf" <<EOF
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$run/events.log"
runtime = "runsc"

[engine.runtimes]
runsc = ["$state/runsc"]
EOF
# runsc's network setup refuses podman's fresh network namespace here ("cannot run with network enabled
# in root network namespace", kernel 6.x); every reference job runs with --network=none anyway, and our
# server passes runsc the same flag.
printf '#!/bin/sh\nexec %s --network=none "$@"\n' "$runsc" >"$state/runsc"
chmod 0755 "$state/runsc"
cat >"$state/etc/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$state/storage"
runroot = "$run/storage"
EOF

# 3. the executor image
if ! podman image exists "$image" 2>/dev/null; then
    bash "$root/scripts/build-rootfs.sh" >/dev/null
    rootfs="$(/usr/bin/python3 "$root/shim/tako_shim/backends/local/rootfs.py" path)"
    [ -d "$rootfs/usr" ] || { say "no root filesystem from scripts/build-rootfs.sh" >&2; exit 1; }
    work="$(mktemp -d /var/tmp/tako-ref-image.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    say "building $image from $rootfs"
    cp -a "$rootfs" "$work/rootfs"
    r="$work/rootfs"
    install -m 0755 "$(command -v gosu)" "$r/usr/sbin/gosu"
    ln -sf python3 "$r/usr/bin/python"
    grep -q '^sandbox:' "$r/etc/passwd" || {
        echo 'sandbox:x:1000:1000::/home/sandbox:/bin/sh' >>"$r/etc/passwd"
        echo 'sandbox:x:1000:' >>"$r/etc/group"
    }
    mkdir -p "$r/home/sandbox" "$r/code" "$r/input" "$r/output" "$r/tako-meta"
    chown 1000:1000 "$r/home/sandbox"
    # The reference's executor contract (tako_vm/execution/worker.py: parse_phase_file, the 124/137
    # exit codes, TAKO_*_TIMEOUT), written for this benchmark: the same steps per job as the
    # reference's entrypoint when a job has no requirements.
    cat >"$r/entrypoint.sh" <<'EOF'
#!/bin/bash
set -e
phase=/output/.tako_phase
if [ -d /tako-meta ] && touch /tako-meta/.tako_phase 2>/dev/null; then phase=/tako-meta/.tako_phase; fi
now() { echo $(($(date +%s%N) / 1000000)); }
t0=$(now)
printf 'container_start_ms=%s\nphase=startup\n' "$t0" >"$phase"
if [ -s /input/_requirements.txt ]; then
    printf 'dep_install_started=true\ndep_install_exit_code=1\nphase=failed\nfailed_phase=startup\n' >>"$phase"
    echo "this executor image has no installer (bench image, scripts/setup-reference.sh)" >&2
    exit 1
fi
t1=$(now)
printf 'dep_install_started=false\ndep_install_ms=0\nstartup_ms=%s\nphase=execution\nexecution_start_ms=%s\n' \
    "$((t1 - t0))" "$t1" >>"$phase"
export XDG_CACHE_HOME=/tmp/.cache MPLCONFIGDIR=/tmp/.cache/matplotlib
gosu sandbox mkdir -p "$XDG_CACHE_HOME" "$MPLCONFIGDIR"
set +e
if [ -n "$TAKO_EXECUTION_TIMEOUT" ]; then
    timeout --signal=TERM --kill-after=10s "${TAKO_EXECUTION_TIMEOUT}s" gosu sandbox python -u /code/main.py
else
    gosu sandbox python -u /code/main.py
fi
rc=$?
set -e
t2=$(now)
if [ -n "$TAKO_EXECUTION_TIMEOUT" ] && [ "$rc" -eq 137 ] && [ $((t2 - t1)) -ge $((TAKO_EXECUTION_TIMEOUT * 1000)) ]; then
    rc=124
fi
printf 'execution_ms=%s\nexecution_exit_code=%s\n' "$((t2 - t1))" "$rc" >>"$phase"
if [ "$rc" -eq 0 ]; then echo phase=completed >>"$phase"; else printf 'phase=failed\nfailed_phase=execution\n' >>"$phase"; fi
echo "total_ms=$((t2 - t0))" >>"$phase"
exit "$rc"
EOF
    chmod 0755 "$r/entrypoint.sh"
    tar -C "$r" -cf "$work/rootfs.tar" .
    podman import --change 'ENTRYPOINT ["/entrypoint.sh"]' --change 'WORKDIR /' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$work/rootfs.tar" "$image" >/dev/null
    rm -rf "$work"
    trap - EXIT
fi
say "image: $(podman image inspect --format '{{.RepoTags}} {{.Config.Entrypoint}}' "$image")"

# 4. the reference, in its own venv
if [ ! -x "$venv/bin/tako-vm" ] || ! "$venv/bin/python" -c 'import tako_vm, sys; sys.exit(tako_vm.__version__ != "0.3.0")' 2>/dev/null; then
    say "installing tako-vm[server]==0.3.0 into $venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q "tako-vm[server]==0.3.0"
fi

# 5. PostgreSQL cluster (the reference keeps its jobs there)
if [ ! -f "$state/pgdata/PG_VERSION" ]; then
    say "initdb $state/pgdata"
    mkdir -p "$state/pgdata"
    chown postgres "$state/pgdata"
    su postgres -s /bin/sh -c "$pgbin/initdb -D $state/pgdata --auth=trust -U postgres" >/dev/null
fi
chown postgres "$run"
pg_was_up=1
su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $state/pgdata status" >/dev/null 2>&1 || pg_was_up=0
[ "$pg_was_up" = 1 ] || su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $state/pgdata -l $state/pgdata/server.log -w start \
    -o '-p $pgport -k $run -c listen_addresses=127.0.0.1'" >/dev/null
"$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='tako_vm'" | grep -q 1 \
    || "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -qc 'CREATE DATABASE tako_vm'
[ "$pg_was_up" = 1 ] || su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $state/pgdata -m fast stop" >/dev/null

# 6. the reference's configuration
cat >"$state/tako_vm.yaml" <<EOF
# scripts/setup-reference.sh: the reference Tako VM 0.3.0 with gVisor through podman
database_url: postgresql://postgres:postgres@127.0.0.1:$pgport/tako_vm
container_runtime: runsc
security_mode: strict
api_rate_limit_enabled: false
# The docker CLI sends a --security-opt seccomp profile's content, podman 4.3's compat API expects a
# path ("file name too long"); runsc does not apply an OCI seccomp profile without --oci-seccomp anyway.
enable_seccomp: false
log_level: WARNING
data_dir: $state/data
EOF
touch "$state/ready"
say "ready: $state (config $state/tako_vm.yaml, venv $venv, image $image)"
