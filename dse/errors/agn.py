"""AGN training: learned per-layer noise tolerances (SCIENCE.md §3, P3's gradient search).

Each approximable layer in `agn` mode adds n = z·std(y)·σ_l to its output before the bias, in training
only (dse.nn). Weights and the σ_l are trained together from the QAT checkpoint with

    L = CE − λ·Σ_l (MACs_l / Σ MACs)·min(|σ_l|, σ_max)

so noise is rewarded in proportion to a layer's share of the multiplications, capped at σ_max. The
learned tolerance of layer l is |σ_l|·std(exact layer output); `mapping.map_assignment` turns it into
a multiplier per layer, and the assignment's accuracy is measured by behavioural simulation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from dse.util import UserError


def agn_regulariser(sigmas: Sequence, shares: Sequence[float], lam: float, sigma_max: float):
    """−λ·Σ_l share_l·min(|σ_l|, σ_max), a torch scalar differentiable in the σ_l.

    ∂/∂σ_l = −λ·share_l·sign(σ_l) while |σ_l| < σ_max, 0 above it (T13).
    """
    import torch

    terms = [
        float(s) * torch.clamp(torch.abs(sig), max=float(sigma_max)).sum() for sig, s in zip(sigmas, shares)
    ]
    return -float(lam) * torch.stack(terms).sum()


def check_agn_settings(lambdas: Sequence[float], sigma_max: float, sigma_init: float | None = None) -> None:
    """UserError on λ < 0, σ_max ≤ 0, σ_init < 0 (or non-finite values)."""
    import math

    if not lambdas:
        raise UserError("--lambda / [agn] lambdas: expected at least one value ≥ 0")
    for lam in lambdas:
        if not math.isfinite(lam) or lam < 0:
            raise UserError(f"--lambda / [agn] lambdas: expected values ≥ 0, got {lam}")
    if not math.isfinite(sigma_max) or sigma_max <= 0:
        raise UserError(f"[agn] sigma_max: expected a value > 0, got {sigma_max}")
    if sigma_init is not None and (not math.isfinite(sigma_init) or sigma_init < 0):
        raise UserError(f"[agn] sigma_init: expected a value ≥ 0, got {sigma_init}")


@dataclass(frozen=True)
class AgnResult:
    """One AGN point: λ, learned σ_l (relative to the layer's output std), tolerance |σ_l|·std(exact
    output) in float output units before bias, the mapped multiplier per layer, its energy_rel and its
    accuracy on the validation split by behavioural simulation (`lut` mode). `rule` and `predictor`
    say how the mapping was made; `train_accuracy_agn` is the AGN model's clean accuracy (eval mode)."""

    lam: float
    sigma_rel: dict[str, float]
    tolerance: dict[str, float]
    assignment: dict[str, str]
    energy_rel: float
    accuracy: float
    rule: str = "bias-aware"
    predictor: str = "sampled"
    agn_accuracy: float | None = None
    alternatives: dict | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: Mapping) -> AgnResult:
        return AgnResult(**d)
