"""CPU of a process *and everything it started*, read from /proc (Linux).

``tree_cpu(pid)`` sums utime+stime+cutime+cstime over ``pid`` and its live descendants: a descendant's
CPU moves from its own fields into its parent's cutime/cstime when the parent reaps it, so the sum stays
exact across exits inside the tree (a process reparented to init and reaped there is lost; this server's
sandboxes are children of their ``runsc run``/``runsc restore``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from bench.analysis import parse_proc_cpu


def parse_ppid(stat_text: str) -> int:
    """Field 4 (ppid) of a ``/proc/<pid>/stat`` text (after the parenthesised command name)."""
    return int(stat_text.rsplit(")", 1)[1].split()[1])


def descendants(root: int, parents: Mapping[int, int]) -> set[int]:
    """``root`` and every pid whose chain of parents reaches it."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stats() -> dict[int, str]:
    texts = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as handle:
                    texts[int(name)] = handle.read()
            except OSError:
                continue  # gone meanwhile
    return texts


def tree_cpu(roots: Iterable[int]) -> float:
    """CPU seconds (own + reaped children) of ``roots`` and all their live descendants, now."""
    texts = _stats()
    parents = {pid: parse_ppid(text) for pid, text in texts.items()}
    ticks = os.sysconf("SC_CLK_TCK")
    pids: set[int] = set()
    for root in roots:
        pids |= descendants(root, parents)
    return sum(sum(parse_proc_cpu(texts[pid], ticks)) for pid in pids if pid in texts)


def tree_size(root: int) -> int:
    texts = _stats()
    return len(descendants(root, {pid: parse_ppid(text) for pid, text in texts.items()}) & texts.keys())
