"""Mapping learned tolerances to multipliers (P3's select_layer_multiplier; docs/REFERENCES.md).

Per layer, independently: the lowest-energy multiplier whose predicted error fits under the layer's
tolerance |σ_l|·std(exact layer output). Rules:
- `sigma` (P3 as published): predicted std σ_pred ≤ tolerance; the mean error is ignored.
- `bias-aware`: predicted RMS error √(σ_pred² + mean_pred²) ≤ tolerance; the AGN noise the tolerance
  was learned with has zero mean, so a biased multiplier must fit its bias under the same budget.
Ties in energy go to the smaller predicted error, then the name, so the result does not depend on the
order of the library. An exact multiplier (zero predicted error) is always feasible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dse.errors.predict import Predictions

RULES = ("sigma", "bias-aware")


def predicted_error(sigma: np.ndarray, mean: np.ndarray, rule: str) -> np.ndarray:
    """The quantity compared with the tolerance under `rule` (same shape as sigma)."""
    if rule == "sigma":
        return np.abs(np.asarray(sigma, np.float64))
    if rule == "bias-aware":
        return np.sqrt(np.asarray(sigma, np.float64) ** 2 + np.asarray(mean, np.float64) ** 2)
    raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")


def choose(predicted: np.ndarray, tolerance: float, energies: Sequence[float], names: Sequence[str]) -> int:
    """Index of the lowest-energy multiplier with predicted[m] ≤ tolerance (ties: smaller predicted error,
    then name). If none fits (no exact multiplier in the list), the one with the smallest predicted error."""
    predicted = np.asarray(predicted, np.float64)
    feasible = [m for m in range(len(names)) if predicted[m] <= tolerance + 1e-12 * max(1.0, tolerance)]
    if not feasible:
        feasible = [int(np.argmin(predicted))]
    return min(feasible, key=lambda m: (energies[m], predicted[m], names[m]))


def map_assignment(
    predictions: Predictions,
    tolerance: Mapping[str, float],
    energies: Mapping[str, float] | Sequence[float],
    rule: str = "sigma",
) -> dict[str, str]:
    """{layer: multiplier}: per layer the lowest-energy multiplier of `predictions.multipliers` whose
    predicted error (rule `sigma` or `bias-aware`) ≤ tolerance[layer] (float output units, before bias).

    `energies`: energy_rel per multiplier name (mapping) or per index of `predictions.multipliers`.
    Layers missing from `tolerance` get the lowest-error multiplier (the exact one when present).
    """
    names = list(predictions.multipliers)
    if isinstance(energies, Mapping):
        e = [float(energies[n]) for n in names]
    else:
        e = [float(v) for v in energies]
    err = predicted_error(predictions.sigma, predictions.mean, rule)
    out = {}
    for li, layer in enumerate(predictions.layers):
        tol = float(tolerance.get(layer, 0.0))
        out[layer] = names[choose(err[li], tol, e, names)]
    return out
