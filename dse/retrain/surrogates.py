"""Error surrogates for retraining: P2's per-neuron statistical error model and the published baselines
it is compared with (P2 Eqs. 11–15, see docs/REFERENCES.md), and `build_surrogates`, which makes one per
approximated layer from the measured statistics (`dse.retrain.statistics`).

Every output surrogate is a small torch module that a layer in `errmodel` mode calls on its output y (float
units, accumulator · output_scale) and whose return value the layer adds to y before the activation:

- `PerNeuronErrorModel`: ξ = σ_ε (ρ s₁ + √(1−ρ²) s₂) + μ_ε with s₁ = (y − μ_y)/σ_y kept in the autograd
  graph (so ∂ξ/∂y = σ_ε ρ / σ_y, P2 Eqs. 11–15) and s₂ ~ N(0, 1) drawn fresh; μ, σ, ρ per output neuron
  ([C, H, W] position for conv, unit for linear), measured offline (`LayerErrorStats`).
- `AwgnNoise`: white Gaussian noise at a fixed SNR relative to the batch's own output power (Hanif et al.).
- `GaussianNoise`: plain additive Gaussian noise with a given σ (and mean) in output units (AGN).
- `MultiplicativeWeightNoise`: Hammad et al.'s W ⊙ Err with Err ~ N(1 + μ_rel, σ_rel²) from the
  multiplier's relative error; it perturbs weights, not outputs (`dse.retrain.loop` applies it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from dse.errors.predict import get_predictions
from dse.multipliers.core import Multiplier, exact_table, operand_values
from dse.prepare import Prepared
from dse.retrain.statistics import MIN_STD, LayerErrorStats
from dse.util import UserError

METHODS = ("behavioral", "errmodel", "multiplicative", "awgn", "agn")


class _NoiseBank:
    """Standard normal noise for s₂, cheaper than `torch.randn_like` on every training step.

    Drawing fresh normals was ~10 % of a LeNet-5 error-model training step on CPU. The bank holds 4× the
    largest request of normals, redrawn after every `reuse` requests; each request is a window at a
    uniformly random offset, so within one request the values are i.i.d. N(0, 1) and the same neuron gets
    unrelated values on different steps (a collision needs the same offset, probability ~1/(3n)).
    """

    def __init__(self, reuse: int = 16) -> None:
        self.reuse = reuse
        self.bank: torch.Tensor | None = None
        self.uses = 0

    def like(self, y: torch.Tensor) -> torch.Tensor:
        n = y.numel()
        bank = self.bank
        if (
            bank is None
            or bank.numel() < 4 * n
            or bank.device != y.device
            or bank.dtype != y.dtype
            or (self.uses >= self.reuse)
        ):
            size = max(4 * n, bank.numel() if bank is not None and bank.device == y.device else 0)
            bank = self.bank = torch.randn(size, device=y.device, dtype=y.dtype)
            self.uses = 0
        self.uses += 1
        offset = int(torch.randint(0, bank.numel() - n + 1, (1,)))
        return bank[offset : offset + n].view(y.shape)


_NOISE = _NoiseBank()


class PerNeuronErrorModel(nn.Module):
    """P2's generator: returns ξ = σ_ε (ρ s₁ + √(1−ρ²) s₂) + μ_ε for a batch y [B, *shape].

    s₁ = (y − μ_y)/σ_y uses the calibration μ_y, σ_y (constants), so the gradient through ξ is exactly
    σ_ε ρ / σ_y per neuron; s₂ is fresh standard normal noise on every call. Computed in the expanded form
    slope·y + offset + a₂·s₂ (fewer tensor ops per training step; the same numbers).
    """

    slope: torch.Tensor  # σ_ε ρ / σ_y per neuron (buffers, so they follow .to(device) and the state_dict)
    offset: torch.Tensor  # μ_ε − slope·μ_y
    a2: torch.Tensor  # σ_ε √(1−ρ²)

    def __init__(
        self,
        mean_y: torch.Tensor,
        std_y: torch.Tensor,
        mean_err: torch.Tensor,
        std_err: torch.Tensor,
        corr: torch.Tensor,
        reuse_noise: bool = True,
    ) -> None:
        super().__init__()
        self.reuse_noise = reuse_noise  # s₂ from the shared bank (`_NoiseBank`) instead of randn each call
        live = std_y > MIN_STD
        rho = torch.where(live, corr, torch.zeros_like(corr)).clamp(-1.0, 1.0)
        inv_std_y = torch.where(live, 1.0 / std_y.clamp_min(MIN_STD), torch.zeros_like(std_y))
        slope = std_err * rho * inv_std_y  # σ_ε ρ / σ_y = ∂ξ/∂y
        # ξ = slope·y + offset + a2·s₂ is the same generator with s₁ expanded: two fused ops per call
        self.register_buffer("slope", slope.detach().float().clone())
        self.register_buffer("offset", (mean_err - slope * mean_y).detach().float().clone())
        self.register_buffer(
            "a2", (std_err * (1 - rho**2).clamp_min(0).sqrt()).detach().float()
        )  # σ_ε √(1−ρ²)

    @classmethod
    def from_stats(cls, stats: LayerErrorStats, reuse_noise: bool = True) -> PerNeuronErrorModel:
        return cls(stats.mean_y, stats.std_y, stats.mean_err, stats.std_err, stats.corr, reuse_noise)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        s2 = _NOISE.like(y) if self.reuse_noise else torch.randn_like(y)
        noise = torch.addcmul(self.offset, self.a2, s2)  # μ_ε − slope·μ_y + σ_ε√(1−ρ²)·s₂
        return torch.addcmul(noise, self.slope, y)  # + σ_ε ρ (y − μ_y)/σ_y, y in the graph

    def extra_repr(self) -> str:
        return f"neurons={self.slope.numel()}, shape={list(self.slope.shape)}"


class AwgnNoise(nn.Module):
    """Zero-mean white Gaussian noise n with E[y²]/E[n²] = 10^(snr_db/10), E[y²] taken from the batch.

    The power is measured on y detached, so the noise carries no gradient (Hanif et al.'s AWGN model).
    """

    def __init__(self, snr_db: float) -> None:
        super().__init__()
        self.snr_db = float(snr_db)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if math.isinf(self.snr_db) and self.snr_db > 0:
            return torch.zeros_like(y)
        power_y = y.detach().pow(2).mean()
        sigma = torch.sqrt(power_y * 10.0 ** (-self.snr_db / 10.0))
        return torch.randn_like(y) * sigma

    def extra_repr(self) -> str:
        return f"snr_db={self.snr_db:.2f}"


class GaussianNoise(nn.Module):
    """Plain additive Gaussian noise: mean + σ·N(0, 1), σ and mean in the layer's float output units."""

    def __init__(self, sigma: float, mean: float = 0.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.mean = float(mean)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(y) * self.sigma + self.mean

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:.4g}, mean={self.mean:.4g}"


class MultiplicativeWeightNoise(nn.Module):
    """Hammad et al.: the layer computes with W ⊙ Err, Err ~ N(1 + rel_mean, rel_std²) drawn per weight."""

    def __init__(self, rel_mean: float, rel_std: float) -> None:
        super().__init__()
        self.rel_mean = float(rel_mean)
        self.rel_std = float(rel_std)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        err = 1.0 + self.rel_mean + self.rel_std * torch.randn_like(weight)
        return weight * err

    def extra_repr(self) -> str:
        return f"rel_mean={self.rel_mean:.4g}, rel_std={self.rel_std:.4g}"


def relative_error_moments(
    lut: np.ndarray, signed: bool, weight_magnitude_only: bool = False
) -> tuple[float, float]:
    """Mean and std of the signed relative error (m̃ − ab)/ab over all operand pairs with ab ≠ 0, uniform.

    `weight_magnitude_only`: for sign-magnitude weights the table sees |w| ≤ 127 only.
    """
    lut = np.asarray(lut, dtype=np.int64)
    exact = exact_table(signed).astype(np.int64)
    mask = exact != 0
    if weight_magnitude_only:
        w = operand_values(signed)
        mask &= ((w >= 0) & (w <= 127))[None, :]
    rel = (lut[mask] - exact[mask]) / exact[mask]
    return float(rel.mean()), float(rel.std())


def predicted_sigma(
    prepared: Prepared, multipliers: Mapping[str, Multiplier]
) -> dict[str, tuple[float, float]]:
    """(σ, mean) per layer from the run's σ predictions (`dse.errors.predict`); {} when the run has none, or
    when they do not cover this assignment (another search space), so that the caller measures σ instead."""
    if not prepared.run_dir.predictions_json.exists():
        return {}
    try:
        pred = get_predictions(prepared)
        out = {}
        for name, m in multipliers.items():
            li, mi = pred.layers.index(name), pred.multipliers.index(m.name)
            out[name] = (float(pred.sigma[li][mi]), float(pred.mean[li][mi]))
        return out
    except (UserError, ValueError, KeyError, OSError):  # not this run's space, or not readable
        return {}


def agn_sigma_source(prepared: Prepared, multipliers: Mapping[str, Multiplier]) -> str:
    """Which σ the `agn` method trains with: "predicted" (the run's σ predictions) or "measured: <why>"
    (the measured per-layer error σ, when the predictions are missing or do not cover the assignment).
    Recorded in the RetrainResult (`noise_sigma`), so the switch is never silent."""
    if not prepared.run_dir.predictions_json.exists():
        return "measured: the run has no σ predictions (profiles/predictions.json; dse search or dse analyze makes them)"
    covered = predicted_sigma(prepared, multipliers)
    missing = [n for n in multipliers if n not in covered]
    if not missing:
        return "predicted"
    return (
        f"measured: the run's σ predictions do not cover {missing[0]} = {multipliers[missing[0]].name} "
        "(another search space or library)"
    )


def build_surrogates(
    method: str,
    prepared: Prepared,
    multipliers: Mapping[str, Multiplier],
    stats: Mapping[str, LayerErrorStats],
) -> dict[str, nn.Module]:
    """{layer: module} for the output-noise methods (errmodel, awgn, agn) or the weight-noise one
    (multiplicative), one per layer of `stats` (the approximated layers)."""
    if method == "errmodel":
        return {n: PerNeuronErrorModel.from_stats(s) for n, s in stats.items()}
    if method == "awgn":
        return {n: AwgnNoise(s.snr_db) for n, s in stats.items()}
    if method == "agn":
        predicted = predicted_sigma(prepared, {n: multipliers[n] for n in stats})
        return {
            n: GaussianNoise(predicted[n][0] if n in predicted else s.sigma_err) for n, s in stats.items()
        }
    if method == "multiplicative":
        sign_magnitude = prepared.fmt.weight_scheme == "sign-magnitude"
        out: dict[str, nn.Module] = {}
        for n in stats:
            m = multipliers[n]
            mean, std = relative_error_moments(m.lut, bool(m.signed), weight_magnitude_only=sign_magnitude)
            out[n] = MultiplicativeWeightNoise(mean, std)
        return out
    raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
