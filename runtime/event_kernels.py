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


SPLIT_OK, SPLIT_X, SPLIT_Y, SPLIT_P, SPLIT_T_RANGE, SPLIT_T_BACK = range(6)
"""Codes returned by ``split_checked_kernel`` (the field of the first bad event)."""


@njit(cache=True, nogil=True)
def split_checked_kernel(ev: np.ndarray, width: int, height: int, t_start_us: int,
                         t_end_us: int, t: np.ndarray, x: np.ndarray, y: np.ndarray,
                         p: np.ndarray) -> tuple[int, int]:
    """Copy the fields of EVENT_DTYPE records ``ev`` (n,) into the columns t, x, y, p (n,)
    while checking the stream contract; stops at the first bad event.

    Returns (index, code): code is SPLIT_OK (index = n) or the first failing check of the
    first bad event, in the order x < width, y < height, p ∈ {0, 1},
    t_start_us ≤ t < t_end_us (µs), t not below its predecessor.
    """
    prev = t_start_us
    for i in range(ev.shape[0]):
        r = ev[i]
        ti = r["t"]
        if r["x"] >= width:
            return i, SPLIT_X
        if r["y"] >= height:
            return i, SPLIT_Y
        if r["p"] > 1:
            return i, SPLIT_P
        if ti < t_start_us or ti >= t_end_us:
            return i, SPLIT_T_RANGE
        if ti < prev:
            return i, SPLIT_T_BACK
        prev = ti
        t[i] = ti
        x[i] = r["x"]
        y[i] = r["y"]
        p[i] = r["p"]
    return ev.shape[0], SPLIT_OK
