"""Numba's parallel loops under the thread budget torch was given.

numba's OpenMP threading layer loads the same ``libgomp`` as torch. Its first ``prange`` loop starts a team of
``NUMBA_NUM_THREADS`` (every core) and sets the process-wide OpenMP thread count to it, so a run told to use one
thread (``train.threads``, ``OMP_NUM_THREADS=1``) would from then on run torch's kernels, and the ones
torch.compile generates, on every core. :func:`torch_threads` wraps the library functions that run a parallel
kernel: the kernel uses as many threads as torch does, and torch keeps its count.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def torch_threads(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` (which calls a numba ``parallel=True`` kernel) on at most torch's thread count when torch is
    loaded (and at most numba's own setting), and give torch that count back afterwards."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        torch = sys.modules.get("torch")
        if torch is None:
            return fn(*args, **kwargs)
        import numba

        threads, before = torch.get_num_threads(), numba.get_num_threads()
        numba.set_num_threads(max(1, min(threads, before)))
        try:
            return fn(*args, **kwargs)
        finally:
            numba.set_num_threads(before)
            torch.set_num_threads(threads)

    return wrapper
