"""Pareto fronts and hypervolume for the two objectives of a search: minimise energy_rel, maximise accuracy.

Hypervolume reference point: energy_rel = 1 (the exact network's energy), accuracy = 0. The 2-D
hypervolume is the area of the union of the rectangles [energy_rel, 1] x [0, accuracy] of the points,
computed directly by a sweep (no library needed in 2-D).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REFERENCE_ENERGY = 1.0
REFERENCE_ACCURACY = 0.0


def pareto_mask(energy: Sequence[float] | np.ndarray, accuracy: Sequence[float] | np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated points (lower energy, higher accuracy). Of identical points
    only the first is kept."""
    e = np.asarray(energy, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    order = np.lexsort((-a, e))  # by energy ascending, then accuracy descending
    mask = np.zeros(len(e), dtype=bool)
    best = -np.inf
    for i in order:
        if a[i] > best:
            mask[i] = True
            best = a[i]
    return mask


def hypervolume(energy: Sequence[float], accuracy: Sequence[float]) -> float:
    """Area dominated by the points, bounded by the reference point (energy_rel 1, accuracy 0).
    Points with energy_rel >= 1 or accuracy <= 0 add nothing."""
    e = np.asarray(energy, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    keep = (e < REFERENCE_ENERGY) & (a > REFERENCE_ACCURACY) & np.isfinite(e) & np.isfinite(a)
    e, a = e[keep], a[keep]
    if len(e) == 0:
        return 0.0
    m = pareto_mask(e, a)
    e, a = e[m], a[m]
    order = np.argsort(e)
    e, a = e[order], a[order]  # energy ascending => accuracy ascending on a front
    right = np.append(e[1:], REFERENCE_ENERGY)
    return float(np.sum((right - e) * (a - REFERENCE_ACCURACY)))
