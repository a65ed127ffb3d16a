"""The local backend's queue order (``PendingOrder``): positions as a plain list would give them, and a
position lookup that does not scan the queue (counted in comparisons, not timed; the time per status
request under a deep queue is measured by bench/load.py)."""

from __future__ import annotations

import math
import random

import pytest

from tako_shim.backends.local.backend import PendingOrder


def test_positions_follow_joins_leaves_and_rejoins_like_a_list() -> None:
    order, model = PendingOrder(), []
    rng = random.Random(3)
    for step in range(3000):
        action = rng.random()
        if action < 0.5 or not model:
            job = f"j{step}"
            order.add(job)
            model.append(job)
        elif action < 0.75:  # a worker takes the head
            order.remove(model.pop(0))
        else:  # a cancel, or a failed cancel that puts the job back at the end
            job = model.pop(rng.randrange(len(model)))
            order.remove(job)
            if action > 0.9:
                order.add(job)
                model.append(job)
        assert len(order) == len(model)
        for probe in {model[0], model[-1], model[len(model) // 2]} if model else set():
            assert order.position(probe) == model.index(probe) + 1
    assert order.position("never-queued") is None and "never-queued" not in order


def test_adding_a_waiting_job_again_keeps_its_place() -> None:
    order = PendingOrder()
    for job in ("a", "b", "c"):
        order.add(job)
    order.add("a")
    assert [order.position(j) for j in ("a", "b", "c")] == [1, 2, 3] and len(order) == 3
    order.remove("b")
    assert order.position("c") == 2 and "b" not in order and bool(order)


class Counted(int):
    """An int ticket that counts every comparison made with it (shared counter)."""

    comparisons = 0

    def __lt__(self, other: object) -> bool:
        Counted.comparisons += 1
        return int(self) < int(other)  # type: ignore[call-overload]

    def __eq__(self, other: object) -> bool:
        Counted.comparisons += 1
        return int(self) == int(other)  # type: ignore[call-overload]

    __hash__ = int.__hash__


def comparisons_per_lookup(size: int) -> int:
    order = PendingOrder()
    for n in range(size):
        order.add(f"job-{n}")
    # The same tickets, wrapped so that every comparison the lookup makes is counted.
    order._tickets = [Counted(t) for t in order._tickets]
    order._ticket_of = {job: Counted(t) for job, t in order._ticket_of.items()}
    Counted.comparisons = 0
    for probe in (0, size // 2, size - 1):
        assert order.position(f"job-{probe}") == probe + 1
    return Counted.comparisons // 3


@pytest.mark.parametrize("size", [10, 1_000, 10_000])
def test_a_position_is_a_binary_search_not_a_scan(size: int) -> None:
    # A scan makes ~size/2 comparisons per lookup; a binary search at most ceil(log2(size + 1)).
    assert comparisons_per_lookup(size) <= math.ceil(math.log2(size + 1)), size
