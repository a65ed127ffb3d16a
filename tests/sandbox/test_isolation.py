"""No network, a read-only world, nothing of the host visible: each attack fails inside real runsc."""

from __future__ import annotations

import json
import os

import pytest
from sandbox_support import Sandbox

pytestmark = pytest.mark.sandbox

NETWORK_ATTACKS = r"""
import json, socket, urllib.request
results = {}
def attempt(name, fn):
    try:
        fn()
        results[name] = "OPEN"
    except Exception as exc:
        results[name] = type(exc).__name__ + ": " + str(exc)[:80]
attempt("tcp 1.1.1.1:443", lambda: socket.create_connection(("1.1.1.1", 443), timeout=3).close())
attempt("tcp 8.8.8.8:53", lambda: socket.create_connection(("8.8.8.8", 53), timeout=3).close())
attempt("tcp 10.0.0.1:80", lambda: socket.create_connection(("10.0.0.1", 80), timeout=3).close())
attempt("tcp pypi.org:443", lambda: socket.create_connection(("pypi.org", 443), timeout=3).close())
attempt("dns pypi.org", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("dns localhost-less", lambda: socket.gethostbyname("example.com"))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("udp 8.8.8.8:53", lambda: udp.sendto(b"x", ("8.8.8.8", 53)))
attempt("urllib https", lambda: urllib.request.urlopen("https://pypi.org/simple/", timeout=3).read())
attempt("urllib http ip", lambda: urllib.request.urlopen("http://1.1.1.1/", timeout=3).read())
results["interfaces"] = [name for _, name in socket.if_nameindex()]
print(json.dumps(results))
"""


async def test_no_network_of_any_kind(sx: Sandbox) -> None:
    outcome = await sx.run(NETWORK_ATTACKS)
    assert outcome.status == "succeeded", outcome
    results = json.loads(outcome.stdout)
    interfaces = results.pop("interfaces")
    assert set(interfaces) <= {"lo"}, interfaces
    opened = {name: value for name, value in results.items() if value == "OPEN"}
    assert not opened, results
    assert len(results) == 9
    await sx.assert_healthy()


FILESYSTEM_ATTACKS = r"""
import json, os
writes = {}
for path in ["/x", "/usr/x", "/usr/bin/python3", "/etc/passwd", "/etc/x", "/code/main.py", "/code/x",
             "/input/data.json", "/runner/runner.py", "/proc/x", "/bin/x"]:
    try:
        with open(path, "a") as handle:
            handle.write("pwned")
        writes[path] = "WROTE"
    except OSError as exc:
        writes[path] = exc.errno
ok = {}
for path in ["/output/a.txt", "/tmp/b.txt"]:
    with open(path, "w") as handle:
        handle.write("fine")
    ok[path] = open(path).read()
print(json.dumps({"writes": writes, "ok": ok}))
"""


async def test_writes_outside_output_and_tmp_fail(sx: Sandbox) -> None:
    outcome = await sx.run(FILESYSTEM_ATTACKS)
    assert outcome.status == "succeeded", outcome
    report = json.loads(outcome.stdout)
    assert all(value != "WROTE" for value in report["writes"].values()), report["writes"]
    assert report["ok"] == {"/output/a.txt": "fine", "/tmp/b.txt": "fine"}
    assert [a["name"] for a in outcome.artifacts] == ["a.txt"]


async def test_host_files_proc_environment_and_secrets_are_invisible(sx: Sandbox) -> None:
    os.environ["TAKO_TEST_HOST_SECRET"] = "s3cr3t-canary-value"
    host_release = os.uname().release
    code = r"""
import json, os, glob
seen = {}
for path in ["/work/main/README.md", "/root", "/home", "/etc/shadow", "/etc/hostname", "/etc/ssl",
             "/var/run/docker.sock", "/sys/fs/cgroup/memory/tako-vm", "/opt", "/srv", "/var/lib"]:
    seen[path] = os.path.exists(path)
environ_dump = ""
for p in glob.glob("/proc/[0-9]*/environ"):
    try:
        environ_dump += open(p, "rb").read().decode("latin-1")
    except OSError:
        pass
print(json.dumps({
    "seen": seen,
    "etc": sorted(os.listdir("/etc")),
    "root": sorted(os.listdir("/")),
    "env": dict(os.environ),
    "environ_dump": environ_dump,
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "uname": os.uname().release,
    "uid": os.getuid(),
    "pid1": open("/proc/1/cmdline", "rb").read().decode().split("\0"),
}))
"""
    outcome = await sx.run(code)
    assert outcome.status == "succeeded", outcome
    report = json.loads(outcome.stdout)
    assert not any(report["seen"].values()), report["seen"]
    assert report["etc"] == ["group", "hosts", "nsswitch.conf", "passwd"]
    assert "work" not in report["root"] and "root" not in report["root"]
    assert "s3cr3t-canary-value" not in outcome.stdout
    assert "TAKO_TEST_HOST_SECRET" not in report["env"]
    assert report["uname"] == "4.4.0" and report["uname"] != host_release  # the gVisor kernel
    assert report["uid"] == 65534
    assert report["pid1"][:3] == ["/usr/bin/python3", "-I", "-S"]  # our runner (its bytecode), not host init
    assert report["pid1"][3].startswith("/runner/") and "runner" in report["pid1"][3].rsplit("/", 1)[1]
    assert len(report["pids"]) <= 3
