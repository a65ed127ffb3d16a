"""The local backend's queue order (``PendingOrder``): positions as a plain list would give them, and a
position lookup that does not scan the queue."""

from __future__ import annotations

import random
import time

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


def test_a_position_costs_the_same_at_10_and_at_10000_queued() -> None:
    def per_lookup(size: int) -> float:
        order = PendingOrder()
        for n in range(size):
            order.add(f"job-{n}")
        last = f"job-{size - 1}"
        started = time.perf_counter()
        for _ in range(2000):
            assert order.position(last) == size
        return (time.perf_counter() - started) / 2000

    small, big = min(per_lookup(10) for _ in range(3)), min(per_lookup(10_000) for _ in range(3))
    # A scan would be ~1000x slower at 10,000; a binary search is ~log2(10000)/log2(10) = 4x at worst.
    assert big < small * 20, f"{big * 1e6:.2f} us at 10,000 vs {small * 1e6:.2f} us at 10"
