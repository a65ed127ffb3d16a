#!/usr/bin/env bash
# Runs INSIDE the fresh Debian 12 guest (as root, started by tako-vm-test.service, see
# build-base-image.sh), from the 9p share /mnt/tako that scripts/test-in-fresh-vm.sh prepared:
#   /mnt/tako/tree.bundle   the project at the commit under test (git bundle of HEAD)
#   /mnt/tako/results/      written here: results.tsv (one line per step, read by scripts/vm/results.py),
#                           server.log, the pytest logs and JUnit files, host facts
# Steps, in order: the host is cgroup v2 with systemd as PID 1; git clone; the README's `make server` in
# the background until /health answers; through the SDK: print(6*7) returns 42, a memory bomb comes
# back as `oom`, a fork bomb is held by the pids cap, a sleep past its deadline comes back as `timeout`,
# and the server still answers and runs a job afterwards; then the sandbox test tier and the cgroup unit
# tests (tests/unit/test_*cgroup*.py). A step that cannot run because an earlier one failed is reported SKIP with the reason.
# The script powers the VM off when it ends (the unit's SuccessAction/FailureAction cover an early exit).
set -uo pipefail
share=/mnt/tako
out=$share/results
tree=/root/tako-vm
url=http://127.0.0.1:8000
mkdir -p "$out"
results=$out/results.tsv
steps=(cgroup-v2-host clone make-server job-42 job-oom job-fork-bomb job-timeout server-survives
       test-deps pytest-sandbox pytest-cgroup-unit)
echo "#plan ${steps[*]}" > "$results"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/root LANG=C.UTF-8

say() { echo "tako-vm-test: $*"; }  # the unit sends it to the journal and the serial console
step_started=0
begin() { step_started=$(date +%s.%N); say "step $1 ..."; }
# record STEP PASS|FAIL|SKIP DETAIL: one tab-separated line; tabs and newlines in DETAIL become spaces.
record() {
    local seconds detail
    seconds=$(awk -v a="$step_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    detail=$(printf '%s' "$3" | tr '\t\n' '  ' | cut -c1-1500)
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$seconds" "$detail" >> "$results"  # 9p: on the host at once
    say "step $1: $2 (${seconds}s) $detail"
}
skip_rest() {  # skip_rest REASON STEP...
    local reason=$1
    shift
    for s in "$@"; do step_started=$(date +%s.%N); record "$s" SKIP "$reason"; done
}
finish() {
    journalctl -b --no-pager > "$out/journal.log" 2>&1
    echo "#done" >> "$results"
    # Power off at once (reboot(2), no unit stop): the results are on the host already and the disk
    # overlay is thrown away. The unit's SuccessAction/FailureAction only cover an early exit.
    systemctl poweroff --force --force
    exit 0
}

# --- 1. the host is what the harness promises --------------------------------------------------------
begin cgroup-v2-host
systemctl is-system-running --wait > /dev/null 2>&1  # multi-user.target reached (this unit is Type=exec)
fstype=$(stat -fc %T /sys/fs/cgroup)
pid1=$(cat /proc/1/comm)
{
    echo "kernel=$(uname -r)"
    echo "debian=$(cat /etc/debian_version)"
    echo "pid1=$pid1"
    echo "cgroup_fs=$fstype"
    echo "cgroup_controllers=$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
    echo "own_cgroup=$(cat /proc/self/cgroup)"
    echo "cpus=$(nproc) mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
    echo "boot=$(systemd-analyze time 2>&1 | head -1)"
    echo "uptime_at_start=$(cut -d' ' -f1 /proc/uptime)"
} > "$out/host.txt"
if [ "$fstype" = cgroup2fs ] && [ "$pid1" = systemd ]; then
    record cgroup-v2-host PASS "$(grep -E '^(kernel|cgroup_controllers|boot)=' "$out/host.txt" | tr '\n' ';')"
else
    record cgroup-v2-host FAIL "not a cgroup v2 + systemd host: /sys/fs/cgroup is $fstype, PID 1 is $pid1"
fi

# --- 2. the project, as a user gets it ---------------------------------------------------------------
begin clone
if git -c advice.detachedHead=false clone -q "$share/tree.bundle" "$tree" > "$out/clone.log" 2>&1; then
    record clone PASS "commit $(git -C "$tree" rev-parse --short HEAD)"
else
    record clone FAIL "$(tail -3 "$out/clone.log")"
    skip_rest "no project tree (clone failed)" "${steps[@]:2}"
    finish
fi
cd "$tree" || exit 1

# --- 3. README: make server (background) --------------------------------------------------------------
begin make-server
setsid make server > "$out/server.log" 2>&1 &
server_pid=$!
health() { python3 -c "import sys, urllib.request
with urllib.request.urlopen('$url/health', timeout=10) as r: sys.exit(r.status != 200)" 2> /dev/null; }
up=no
for _ in $(seq 1 1800); do  # up to an hour: setup installs runsc and the venv from the network under TCG
    if health; then up=yes; break; fi
    kill -0 "$server_pid" 2> /dev/null || break
    sleep 2
done
if [ $up = yes ]; then
    record make-server PASS "/health 200; $(grep -m1 'listening on' "$out/server.log")"
else
    why="server exited"; kill -0 "$server_pid" 2> /dev/null && why="no /health 200 within an hour"
    record make-server FAIL "$why; server.log: $(grep -v '^WARNING: Location' "$out/server.log" | tail -8)"
    skip_rest "no server (make server failed)" job-42 job-oom job-fork-bomb job-timeout server-survives
fi

# --- 4-8. jobs through the SDK (the README's run_python) -------------------------------------------
# sdk_job STEP PYTHON_CHECK: runs the check with the venv's Python; it prints one line and exits 0 on PASS.
sdk_job() {
    local name=$1 check=$2 output
    begin "$name"
    if output=$(timeout 1200 .venv/bin/python - 2>&1 <<EOF
import json, sys
import tako_vm

URL = "$url"
tako_vm.configure(URL)
WAIT = 900  # seconds: sandboxes start slowly under TCG emulation


def job(code, **kw):
    job_id = tako_vm.submit_code(code, **kw)
    return tako_vm.get_result(job_id, timeout=WAIT)


def show(record):
    keys = ("status", "stdout", "stderr", "error", "exit_code")
    return json.dumps({k: record.get(k) for k in keys})[:1200]


$check
EOF
    ); then
        record "$name" PASS "$(printf '%s' "$output" | tail -1)"
    else
        record "$name" FAIL "$(printf '%s' "$output" | tail -6)"
    fi
}
if [ $up = yes ]; then
    sdk_job job-42 '
def run_python(code, requirements=None):  # the README snippet, waiting longer for TCG
    job_id = tako_vm.submit_code(code, requirements=requirements or [], timeout=60)
    record = tako_vm.get_result(job_id, timeout=WAIT)
    if record["status"] == "succeeded":
        return record["stdout"] or "(no output)"
    return "Execution %s.\nstderr:\n%s\nerror: %s" % (record["status"], record.get("stderr", ""), record.get("error", ""))
answer = run_python("print(6*7)")
print(repr(answer))
sys.exit(answer.strip() != "42")'
    sdk_job job-oom '
r = job("blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n", timeout=120)
print(show(r))
sys.exit(r["status"] != "oom")'
    sdk_job job-fork-bomb '
code = """
import os, time
count = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        count += 1
except OSError as exc:
    print(count, exc.errno)
"""
r = job(code, timeout=120)
print(show(r))
ok = r["status"] == "succeeded" and len(r["stdout"].split()) == 2
forked, errno = (int(x) for x in r["stdout"].split()) if ok else (-1, -1)
sys.exit(not (ok and errno == 11 and 0 < forked <= 100))  # EAGAIN at the default pids_limit (100)'
    sdk_job job-timeout '
r = job("import time\ntime.sleep(600)\n", timeout=5)
print(show(r))
sys.exit(r["status"] != "timeout")'
    sdk_job server-survives '
import urllib.request
with urllib.request.urlopen(URL + "/health", timeout=30) as resp:
    health = json.load(resp)
r = job("print(1)", timeout=60)
print(json.dumps(health)[:300], show(r))
sys.exit(not (health.get("status") == "healthy" and r["status"] == "succeeded" and r["stdout"] == "1\n"))'
fi
if kill -0 "$server_pid" 2> /dev/null; then  # stop the server (make and tako-vm share its session)
    kill -TERM -- -"$server_pid" 2> /dev/null
    for _ in $(seq 1 60); do kill -0 "$server_pid" 2> /dev/null || break; sleep 1; done
    kill -KILL -- -"$server_pid" 2> /dev/null
fi

# --- 9-11. the test tiers that need a real cgroup v2 host ------------------------------------------
begin test-deps
if [ ! -x .venv/bin/pytest ]; then
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[all,dev]" > "$out/test-deps.log" 2>&1
fi
if [ -x .venv/bin/pytest ]; then
    record test-deps PASS "$(.venv/bin/pytest --version 2>&1 | head -1)"
else
    record test-deps FAIL "no .venv/bin/pytest: $(tail -5 "$out/test-deps.log" 2> /dev/null)"
    skip_rest "no pytest (test-deps failed)" pytest-sandbox pytest-cgroup-unit
    finish
fi
export PATH=$tree/.tools/bin:$PATH
# pytest_step STEP JUNIT_NAME ARGS...: PASS on exit 0, SKIP on exit 5 (nothing collected), else FAIL.
pytest_step() {
    local name=$1 junit=$2 rc
    shift 2
    begin "$name"
    timeout 5400 .venv/bin/pytest -q -ra -p no:cacheprovider --junitxml="$out/$junit" "$@" \
        > "$out/$name.log" 2>&1
    rc=$?
    case $rc in
        0) record "$name" PASS "$(tail -1 "$out/$name.log")" ;;
        5) record "$name" SKIP "no tests selected: $*" ;;
        *) record "$name" FAIL "exit $rc: $(tail -1 "$out/$name.log")" ;;
    esac
}
pytest_step pytest-sandbox junit-sandbox.xml tests/sandbox
cgroup_units=(tests/unit/test_*cgroup*.py)
if [ -e "${cgroup_units[0]}" ]; then
    pytest_step pytest-cgroup-unit junit-cgroup-unit.xml "${cgroup_units[@]}"
else
    step_started=$(date +%s.%N)
    record pytest-cgroup-unit SKIP "no tests/unit/test_*cgroup*.py in this tree"
fi
finish
