"""The sandboxes' root filesystem: a minimal Debian bookworm built once with debootstrap (docs/sandbox.md).

Every local sandbox binds this tree's ``/usr`` read-only (never the host's), so user code and the runner
see the same interpreter, stdlib and ``dist-packages`` on every host: Debian bookworm's python3 (3.11,
the minor version and Debian release of the Kubernetes job image ``python:3.11.*-slim-bookworm``) with
python3-pip (the install sandbox runs ``python3 -m pip install --target /deps``) and ca-certificates
(the install sandbox's CA bundle on a host that has none of its own).

The recipe is this file: its sha256 names the tree (``<cache>/<recipe hash>``), so any change here
builds a new tree next to the old one, and a checkout always finds the tree of its own recipe. The
build is atomic: debootstrap fills a temporary directory next to the destination, which is renamed into
place only when complete (with its manifest, ``tako-rootfs.json``); an interrupted build leaves no
partial tree under the final name, only a temporary directory that the next build removes.

Stdlib only, so that ``scripts/build-rootfs.sh`` runs it with the system python3 before any venv exists
(outside a checkout: ``python -m tako_shim.backends.local.rootfs``; as root, with debootstrap installed):

    python3 shim/tako_shim/backends/local/rootfs.py build [--dest DIR] [--mirror URL]
    python3 shim/tako_shim/backends/local/rootfs.py path       # where the executor looks by default
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-pip", "ca-certificates")
PYTHON_MINOR = "3.11"  # Debian bookworm's python3, and the job image's (python:3.11.*-slim-bookworm)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # every Release file is checked against it
DEFAULT_CACHE = Path("/var/cache/tako-vm/rootfs")
MANIFEST = "tako-rootfs.json"  # at the top of the tree; sandboxes only see its /usr
PYTHON = "usr/bin/python3"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"  # from ca-certificates
TOP_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # symlinks into /usr on a merged-/usr root
TMP_PREFIX = ".tmp-"
# Left out of the tree: apt's downloaded indexes and packages (rebuilt on demand, never used by sandboxes).
PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists")
_PROBE = (
    "import importlib.util, json, platform, sys; print(json.dumps({'version': platform.python_version(),"
    " 'magic': importlib.util.MAGIC_NUMBER.hex(), 'cache_tag': sys.implementation.cache_tag}))"
)


def recipe_hash() -> str:
    """16 hex digits of the sha256 of this file: the build steps, the suite and the package list."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def default_path(cache: Path = DEFAULT_CACHE) -> Path:
    """Where ``build`` puts the tree of this recipe, and where the executor looks without ``rootfs_path``."""
    return cache / recipe_hash()


def problem(root: Path) -> str | None:
    """None when ``root`` can serve as the sandboxes' root filesystem, else why not (one line)."""
    if not root.is_dir():
        return f"no sandbox root filesystem at {root}"
    if not (root / PYTHON).is_file():
        return f"the sandbox root filesystem {root} has no /{PYTHON}"
    return None


def manifest(root: Path) -> dict[str, object]:
    """The build's manifest (recipe, python version and bytecode magic, package versions), or {}."""
    try:
        data = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def top_dirs(root: Path) -> dict[str, str | None]:
    """``/bin``, ``/lib``, ... of ``root``: name -> symlink target, or None for a real directory."""
    entries: dict[str, str | None] = {}
    for name in TOP_DIRS:
        path = root / name
        if path.is_symlink():
            entries[name] = os.readlink(path)
        elif path.is_dir():
            entries[name] = None
    return entries


def debootstrap_argv(debootstrap: str, target: Path, mirror: str) -> list[str]:
    """debootstrap in a private mount namespace: the /proc and /sys it mounts in the target vanish with
    it, even when it is killed, so removing a failed target never walks into a mounted filesystem. The
    signature check is forced (debootstrap would only warn and go on when the keyring is missing)."""
    return [
        "unshare", "--mount", "--propagation", "private",
        debootstrap, f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", "--components=main",
        "--merged-usr", "--force-check-gpg", f"--keyring={KEYRING}", SUITE, str(target), mirror,
    ]  # fmt: skip


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4]
            if point.startswith(prefix) or point == prefix[:-1]:
                found.append(point)
    return found


def _remove(path: Path) -> None:
    """Remove a temporary tree, refusing if anything is mounted inside it (never delete through a mount)."""
    mounted = _mounts_under(path)
    if mounted:
        raise RuntimeError(f"refusing to remove {path}: {mounted[0]} is mounted inside it")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a concurrent build of the same tree waits, then finds it done
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(message: str) -> None:
    print(f"build-rootfs: {message}", file=sys.stderr, flush=True)


def _finish(tmp: Path, seconds: float, mirror: str) -> None:
    """Prune apt's caches, record the manifest (last: a tree without it is incomplete)."""
    for relative in PRUNE:
        for entry in (tmp / relative).glob("*"):
            if entry.is_file() and entry.name != "lock":
                entry.unlink()
    python = json.loads(
        subprocess.run(
            ["chroot", str(tmp), f"/{PYTHON}", "-I", "-S", "-c", _PROBE],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout
    )  # fmt: skip
    if not python["version"].startswith(PYTHON_MINOR + "."):
        raise RuntimeError(f"{SUITE}'s python3 is {python['version']}, the recipe expects {PYTHON_MINOR}")
    versions = subprocess.run(
        ["chroot", str(tmp), "dpkg-query", "-W", "-f=${Package} ${Version}\n"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    packages = dict(line.split(" ", 1) for line in versions.splitlines() if " " in line)
    data = {
        "recipe": recipe_hash(),
        "suite": SUITE,
        "variant": VARIANT,
        "include": list(PACKAGES),
        "mirror": mirror,
        "python": python,
        "packages": {name: packages[name] for name in sorted(packages) if name in (*PACKAGES, "python3.11")},
        "package_count": len(packages),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(seconds, 1),
    }
    (tmp / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    tmp.chmod(0o755)


def build(dest: Path, *, mirror: str = DEFAULT_MIRROR, debootstrap: str = "debootstrap") -> bool:
    """Build the tree at ``dest`` unless it is already there; True when it was built now."""
    if (dest / MANIFEST).is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with _locked(dest.parent / f".{dest.name}.lock"):
        if (dest / MANIFEST).is_file():  # another build finished while we waited
            return False
        for stale in dest.parent.glob(f"{TMP_PREFIX}{dest.name}-*"):  # left by an interrupted build
            _remove(stale)
        if dest.exists():
            raise RuntimeError(f"{dest} exists but has no {MANIFEST}: not a complete build; remove it")
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{dest.name}-", dir=dest.parent))
        started = time.monotonic()
        try:
            _say(f"debootstrap {SUITE} ({VARIANT} + {', '.join(PACKAGES)}) from {mirror} into {tmp}")
            done = subprocess.run(debootstrap_argv(debootstrap, tmp, mirror), capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
                raise RuntimeError(f"debootstrap exited {done.returncode}: " + " | ".join(tail))
            _finish(tmp, time.monotonic() - started, mirror)
            os.rename(tmp, dest)
        except BaseException:
            _remove(tmp)
            raise
    _say(f"built {dest} in {time.monotonic() - started:.0f} s")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rootfs.py", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the tree of this recipe unless it exists")
    build_cmd.add_argument("--dest", type=Path, help=f"default: {DEFAULT_CACHE}/<recipe hash>")
    build_cmd.add_argument("--mirror", default=os.environ.get("TAKO_VM_ROOTFS_MIRROR", DEFAULT_MIRROR))
    commands.add_parser("path", help="print the default location of this recipe's tree")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(default_path())
        return 0
    dest = (args.dest or default_path()).absolute()
    if os.geteuid() != 0:
        _say("debootstrap needs root (run it as root, as `make setup` on the server machine is)")
        return 1
    try:
        built = build(dest, mirror=args.mirror, debootstrap=shutil.which("debootstrap") or "debootstrap")
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _say(f"FAILED: {exc}")
        return 1
    info = manifest(dest)
    python = info.get("python")
    version = python.get("version") if isinstance(python, dict) else "?"
    _say(f"{'built' if built else 'up to date'}: {dest} (python {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
