"""numba kernels over event columns (kept apart from the orchestration in ``augury.events``)."""

from __future__ import annotations

import numpy as np
from numba import njit

INT64_MIN = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def validate_kernel(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray,
                    width: int, height: int, t_floor_us: int, window_us: int,
                    keep: np.ndarray) -> tuple[int, int, int, bool]:
    """One pass marking the events that may reach the network; returns the drop counts.

    keep[i] ← event i lies inside width × height, has p ∈ {0, 1} and
    t[i] ≥ max(t_floor_us, max of the kept t so far) − window_us.
    Returns (out_of_bounds, bad_polarity, time_backwards, needs_sort), where needs_sort says
    that some kept event is older than the one kept before it (inside the reorder window).
    Columns have shape (n,), keep is a bool array of shape (n,).
    """
    run_max = t_floor_us
    last = INT64_MIN
    n_oob = 0
    n_badp = 0
    n_back = 0
    needs_sort = False
    for i in range(t.shape[0]):
        if x[i] >= width or y[i] >= height:
            keep[i] = False
            n_oob += 1
        elif p[i] > 1:
            keep[i] = False
            n_badp += 1
        elif run_max != INT64_MIN and t[i] < run_max - window_us:
            keep[i] = False
            n_back += 1
        else:
            keep[i] = True
            if t[i] < last:
                needs_sort = True
            last = t[i]
            if t[i] > run_max:
                run_max = t[i]
    return n_oob, n_badp, n_back, needs_sort
