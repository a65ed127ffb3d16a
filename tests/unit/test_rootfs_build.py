"""The sandboxes' root filesystem recipe and its atomic build (shim/tako_shim/backends/local/rootfs.py).

The real debootstrap runs in ``make setup`` (scripts/build-rootfs.sh) and the sandbox tier uses its
tree (tests/sandbox/test_rootfs.py). Here a stand-in debootstrap (a shell script that writes a tree or
fails) exercises the build's atomicity; it still runs under ``unshare --mount``, which needs root, so
those tests are skipped, saying so, when not root.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import yaml

from tako_shim.backends.local import rootfs

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the build runs debootstrap under unshare --mount (root)"
)


def test_the_recipe_hash_is_the_hash_of_the_recipe_file_and_names_the_tree() -> None:
    expected = hashlib.sha256(Path(rootfs.__file__).read_bytes()).hexdigest()[:16]
    assert rootfs.recipe_hash() == expected
    assert rootfs.default_path(Path("/c")) == Path("/c") / expected
    assert rootfs.default_path() == rootfs.DEFAULT_CACHE / expected


def test_debootstrap_runs_minbase_bookworm_with_python_and_pip_in_a_private_mount_namespace() -> None:
    argv = rootfs.debootstrap_argv("/usr/sbin/debootstrap", Path("/c/.tmp-x"), "http://mirror/debian")
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert argv[4] == "/usr/sbin/debootstrap"
    assert "--variant=minbase" in argv
    assert "--include=python3,python3-pip,ca-certificates" in argv
    assert "--force-check-gpg" in argv  # never an unverified tree (debootstrap only warns without a keyring)
    assert "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg" in argv
    assert argv[-3:] == ["bookworm", "/c/.tmp-x", "http://mirror/debian"]


def test_the_system_root_matches_the_kubernetes_job_image() -> None:
    """Same Debian release and Python minor version as the pinned default job image (gitops/) and the
    operator/shim base image: a job behaves the same on both backends."""
    images = [yaml.safe_load((ROOT / "gitops/job-types/default.yaml").read_text())["spec"]["image"]]
    for dockerfile in ("operator", "shim"):
        text = (ROOT / "docker" / f"{dockerfile}.Dockerfile").read_text()
        images += re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    for image in images:
        match = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-(\w+)@sha256:[0-9a-f]{64}", image)
        assert match, image
        assert (match.group(1), match.group(2)) == (rootfs.PYTHON_MINOR, rootfs.SUITE), image


def fake_tree(root: Path, *, merged: bool = True) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir()
    (root / "usr/bin/python3").write_text("#!/bin/false\n")
    if merged:
        (root / "bin").symlink_to("usr/bin")
        (root / "lib").symlink_to("usr/lib")
    else:
        (root / "lib64").mkdir()
    return root


def test_problem_names_a_missing_tree_or_interpreter(tmp_path: Path) -> None:
    assert rootfs.problem(tmp_path / "none") == f"no sandbox root filesystem at {tmp_path / 'none'}"
    (tmp_path / "empty").mkdir()
    expected = f"the sandbox root filesystem {tmp_path / 'empty'} has no /usr/bin/python3"
    assert rootfs.problem(tmp_path / "empty") == expected
    assert rootfs.problem(fake_tree(tmp_path / "ok")) is None


def test_top_dirs_reads_the_trees_links_and_real_directories(tmp_path: Path) -> None:
    assert rootfs.top_dirs(fake_tree(tmp_path / "m")) == {"bin": "usr/bin", "lib": "usr/lib"}
    assert rootfs.top_dirs(fake_tree(tmp_path / "s", merged=False)) == {"lib64": None}


def fake_debootstrap(tmp_path: Path, *, fail: bool) -> str:
    """Writes a tree into its target (second to last argument), then fails or succeeds."""
    script = tmp_path / "debootstrap"
    body = 'target="${@: -2:1}"\nmkdir -p "$target/usr/bin"\necho x > "$target/usr/bin/python3"\n'
    script.write_text("#!/bin/bash\n" + body + ("echo 'E: boom' >&2; exit 7\n" if fail else "exit 0\n"))
    script.chmod(0o755)
    return str(script)


def stand_in_finish(tmp: Path, seconds: float, mirror: str) -> None:
    (tmp / rootfs.MANIFEST).write_text('{"python": {"version": "3.11.2"}}')


@needs_root
def test_a_failed_build_leaves_neither_the_tree_nor_its_temporary_directory(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dest = cache / "abc"
    with pytest.raises(RuntimeError, match=r"debootstrap exited 7: .*E: boom"):
        rootfs.build(dest, debootstrap=fake_debootstrap(tmp_path, fail=True))
    assert not dest.exists()
    assert [p.name for p in cache.iterdir()] == [".abc.lock"]


@needs_root
def test_a_build_replaces_an_interrupted_one_and_appears_only_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rootfs, "_finish", stand_in_finish)
    cache = tmp_path / "cache"
    interrupted = cache / f"{rootfs.TMP_PREFIX}abc-old"
    (interrupted / "usr").mkdir(parents=True)  # what a killed build leaves
    dest = cache / "abc"
    assert rootfs.build(dest, debootstrap=fake_debootstrap(tmp_path, fail=False)) is True
    assert not interrupted.exists()
    assert rootfs.manifest(dest) == {"python": {"version": "3.11.2"}}
    assert (dest / "usr/bin/python3").is_file()
    assert sorted(p.name for p in cache.iterdir()) == [".abc.lock", "abc"]
    # built once: a second call finds it and does nothing
    assert rootfs.build(dest, debootstrap="/nonexistent/debootstrap") is False


@needs_root
def test_a_tree_without_a_manifest_is_not_taken_for_a_build(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "abc"
    (dest / "usr").mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"has no tako-rootfs\.json"):
        rootfs.build(dest, debootstrap=fake_debootstrap(tmp_path, fail=False))


def test_removing_a_temporary_tree_refuses_to_walk_into_a_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "/proc" in rootfs._mounts_under(Path("/proc"))  # read from /proc/self/mountinfo
    tree = tmp_path / "t"
    (tree / "proc").mkdir(parents=True)
    monkeypatch.setattr(rootfs, "_mounts_under", lambda path: [str(path / "proc")])
    with pytest.raises(RuntimeError, match=f"refusing to remove {tree}: {tree}/proc is mounted inside it"):
        rootfs._remove(tree)
    assert (tree / "proc").is_dir()  # nothing was deleted
    monkeypatch.undo()
    rootfs._remove(tree)
    assert not tree.exists()
