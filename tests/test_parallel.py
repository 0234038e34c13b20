"""Tests of utils.parallel.map_processes, the one process pool of the package."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from utils.parallel import map_processes, pool_size

STATE = {"initialised": False}


def slow_identity(item: int) -> int:
    """Later items finish first, so completion order is the reverse of input order."""
    time.sleep(0.05 * (4 - item))
    return item


def fail_on_three(item: int) -> int:
    if item == 3:
        raise ValueError(f"item {item} is bad")
    time.sleep(0.2)
    return item


def pid_and_state(item: int) -> tuple[int, int, bool]:
    return item, os.getpid(), STATE["initialised"]


def initialise() -> None:
    STATE["initialised"] = True


def test_results_come_in_input_order_or_as_completed():
    seen: list[int] = []
    assert map_processes(slow_identity, range(5), workers=5, on_result=seen.append) == [
        0, 1, 2, 3, 4]
    assert seen == [0, 1, 2, 3, 4]
    done = map_processes(slow_identity, range(5), workers=5, ordered=False)
    assert sorted(done) == [0, 1, 2, 3, 4] and done != [0, 1, 2, 3, 4]


@pytest.mark.parametrize("ordered", [True, False])
def test_a_worker_exception_propagates_and_the_pool_is_shut_down(ordered):
    with pytest.raises(ValueError, match="item 3 is bad"):
        map_processes(fail_on_three, range(8), workers=2, ordered=ordered)
    assert multiprocessing.active_children() == []


def test_one_worker_runs_inline_without_the_initializer():
    rows = map_processes(pid_and_state, range(3), workers=1, initializer=initialise)
    assert rows == [(i, os.getpid(), False) for i in range(3)]
    assert map_processes(pid_and_state, [7], workers=4)[0][1] == os.getpid()  # one item


def test_spawned_workers_run_the_initializer_in_other_processes():
    rows = map_processes(pid_and_state, range(4), workers=2, spawn=True, ordered=False,
                         initializer=initialise)
    assert sorted(r[0] for r in rows) == [0, 1, 2, 3]
    assert all(pid != os.getpid() and initialised for _, pid, initialised in rows)
    assert not STATE["initialised"]


def test_pool_size_is_capped_by_the_items():
    assert pool_size(8, 3) == 3 and pool_size(None, 0) == 1 and pool_size(2, 10) == 2
