"""A small dense linear solve without allocation, shared by the numba kernels and the
reference (same operations in the same order: the two agree bit for bit).

Used by the shared linear forecaster's Bayesian update (kernels ``_learn_residual``): the
posterior mean of its NF weights solves Λ w = b with Λ its (NF, NF) information matrix.
"""

from __future__ import annotations

import numpy as np


def solve_into(a: np.ndarray, b: np.ndarray, ridge: float, work: np.ndarray,
               out: np.ndarray) -> None:
    """out ← (a + ridge I)⁻¹ b by Gaussian elimination with partial pivoting.

    a (n, n), b (n,), work (n, n + 1) scratch, out (n,); a and b are not modified. A pivot
    below 1e-300 leaves that unknown at 0 (a singular direction carries no information).
    """
    n = b.shape[0]
    for i in range(n):
        for k in range(n):
            work[i, k] = a[i, k]
        work[i, i] += ridge
        work[i, n] = b[i]
    for c in range(n):
        piv = c
        big = abs(work[c, c])
        for r in range(c + 1, n):
            if abs(work[r, c]) > big:
                big = abs(work[r, c])
                piv = r
        if piv != c:
            for k in range(n + 1):
                tmp = work[c, k]
                work[c, k] = work[piv, k]
                work[piv, k] = tmp
        if abs(work[c, c]) < 1e-300:
            continue
        for r in range(c + 1, n):
            f = work[r, c] / work[c, c]
            if f != 0.0:
                for k in range(c, n + 1):
                    work[r, k] -= f * work[c, k]
    for c in range(n - 1, -1, -1):
        if abs(work[c, c]) < 1e-300:
            out[c] = 0.0
            continue
        acc = work[c, n]
        for k in range(c + 1, n):
            acc -= work[c, k] * out[k]
        out[c] = acc / work[c, c]
