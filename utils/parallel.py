"""One process pool for the whole package: :func:`map_processes`.

Cohort generation, manifest file checks and the preprocessing run each map a function over
patients on worker processes. They all go through here: a
:class:`concurrent.futures.ProcessPoolExecutor` in a ``with`` block, so the pool is shut
down however the loop ends; an exception raised in a worker is raised here (pending tasks
are cancelled first). ``workers=1`` (or a single item) runs inline, in this process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def pool_size(workers: int | None, items: int) -> int:
    """``workers`` (default: all cores), at most one per item and at least one."""
    return max(1, min(workers or os.cpu_count() or 1, items))


def map_processes(function: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                  *, ordered: bool = True, spawn: bool = False, chunksize: int = 1,
                  initializer: Callable[..., Any] | None = None, initargs: tuple = (),
                  on_result: Callable[[R], Any] | None = None) -> list[R]:
    """``[function(item) for item in items]`` on ``workers`` processes.

    ``ordered``: results in input order (else in completion order, ``chunksize`` unused).
    ``spawn``: fresh interpreters instead of forked ones (no inherited threads or ITK
    state). ``initializer(*initargs)`` runs once in each worker process, never inline.
    ``on_result`` is called here with each result as it arrives (e.g. a progress bar).
    """
    jobs = list(items)
    workers = pool_size(workers, len(jobs))
    if workers == 1:
        return [_seen(function(job), on_result) for job in jobs]
    context = get_context("spawn") if spawn else None
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer,
                             initargs=initargs) as pool:
        try:
            if ordered:
                return [_seen(r, on_result) for r in pool.map(function, jobs,
                                                               chunksize=chunksize)]
            futures = [pool.submit(function, job) for job in jobs]
            return [_seen(f.result(), on_result) for f in as_completed(futures)]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _seen(result: R, on_result: Callable[[R], Any] | None) -> R:
    if on_result is not None:
        on_result(result)
    return result
