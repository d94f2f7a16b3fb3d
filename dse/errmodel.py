"""Error surrogates for retraining: the per-neuron statistical error model (SCIENCE.md §2, P2) and the
published baselines it is compared with.

Every surrogate is a small torch module that a layer in `errmodel` mode calls on its output y (float units,
accumulator · output_scale) and whose return value the layer adds to y before the activation:

- `PerNeuronErrorModel`: ξ = σ_ε (ρ s₁ + √(1−ρ²) s₂) + μ_ε with s₁ = (y − μ_y)/σ_y kept in the autograd
  graph (so ∂ξ/∂y = σ_ε ρ / σ_y, P2 Eqs. 11–15) and s₂ ~ N(0, 1) drawn fresh; μ, σ, ρ per output neuron
  ([C, H, W] position for conv, unit for linear), measured offline by `NeuronStatsAccumulator`.
- `AwgnNoise`: white Gaussian noise at a fixed SNR relative to the batch's own output power (Hanif et al.).
- `GaussianNoise`: plain additive Gaussian noise with a given σ (and mean) in output units (AGN).
- `MultiplicativeWeightNoise`: Hammad et al.'s W ⊙ Err with Err ~ N(1 + μ_rel, σ_rel²) from the
  multiplier's relative error; it perturbs weights, not outputs (see `dse.retrain`).

Statistics and their calibration from behavioural simulation live here too (`LayerErrorStats`,
`measure_error_stats`), so retraining only has to choose and attach a surrogate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# A neuron whose exact output never varies over the calibration sample has no s₁; it gets ρ = 0.
_MIN_STD = 1e-12


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


@dataclass(frozen=True)
class LayerErrorStats:
    """Per-neuron moments of one layer's output y and its approximation error ε = ỹ − y.

    Tensors have the per-sample output shape ([C, H, W] for conv, [N_out] for linear), float32, in the
    layer's float output units before bias. The layer-wide figures feed the baselines: `snr_db` =
    10·log10(E[y²]/E[ε²]), `sigma_err` / `mean_err_layer` the pooled std / mean of ε over all neurons.
    """

    mean_y: torch.Tensor
    std_y: torch.Tensor
    mean_err: torch.Tensor
    std_err: torch.Tensor
    corr: torch.Tensor
    samples: int
    power_y: float
    power_err: float
    sigma_err: float
    mean_err_layer: float

    @property
    def snr_db(self) -> float:
        if self.power_err <= 0:
            return math.inf
        if self.power_y <= 0:
            return -math.inf
        return 10.0 * math.log10(self.power_y / self.power_err)

    def to_dict(self) -> dict:
        return {
            "mean_y": self.mean_y,
            "std_y": self.std_y,
            "mean_err": self.mean_err,
            "std_err": self.std_err,
            "corr": self.corr,
            "samples": self.samples,
            "power_y": self.power_y,
            "power_err": self.power_err,
            "sigma_err": self.sigma_err,
            "mean_err_layer": self.mean_err_layer,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> LayerErrorStats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


class NeuronStatsAccumulator:
    """Streams (y_exact, y_approx) batches [B, *shape] into per-neuron sums (float64), then `finish()`."""

    def __init__(self) -> None:
        self.n = 0
        self._sums: dict[str, torch.Tensor] | None = None

    def add(self, y_exact: torch.Tensor, y_approx: torch.Tensor) -> None:
        if y_exact.shape != y_approx.shape:
            raise ValueError(f"shapes differ: {list(y_exact.shape)} vs {list(y_approx.shape)}")
        y = y_exact.detach().to(torch.float64)
        e = y_approx.detach().to(torch.float64) - y
        batch = {
            "y": y.sum(0),
            "yy": (y * y).sum(0),
            "e": e.sum(0),
            "ee": (e * e).sum(0),
            "ye": (y * e).sum(0),
        }
        if self._sums is None:
            self._sums = batch
        else:
            if batch["y"].shape != self._sums["y"].shape:
                raise ValueError("per-sample output shape changed between batches")
            for k, v in batch.items():
                self._sums[k] += v
        self.n += y.shape[0]

    def finish(self) -> LayerErrorStats:
        if self._sums is None or self.n < 2:
            raise ValueError("need at least two calibration samples")
        s, n = self._sums, self.n
        mean_y, mean_e = s["y"] / n, s["e"] / n
        var_y = (s["yy"] / n - mean_y**2).clamp_min(0)
        var_e = (s["ee"] / n - mean_e**2).clamp_min(0)
        cov = s["ye"] / n - mean_y * mean_e
        std_y, std_e = var_y.sqrt(), var_e.sqrt()
        denom = std_y * std_e
        corr = torch.where(denom > _MIN_STD, cov / denom.clamp_min(_MIN_STD), torch.zeros_like(cov))
        corr = corr.clamp(-1.0, 1.0)
        cells = n * mean_y.numel()
        power_y = float(s["yy"].sum() / cells)
        power_err = float(s["ee"].sum() / cells)
        mean_layer = float(s["e"].sum() / cells)
        sigma_layer = math.sqrt(max(power_err - mean_layer**2, 0.0))
        f32 = torch.float32
        return LayerErrorStats(
            mean_y=mean_y.to(f32),
            std_y=std_y.to(f32),
            mean_err=mean_e.to(f32),
            std_err=std_e.to(f32),
            corr=corr.to(f32),
            samples=n,
            power_y=power_y,
            power_err=power_err,
            sigma_err=sigma_layer,
            mean_err_layer=mean_layer,
        )


def neuron_stats(y_exact: torch.Tensor, y_approx: torch.Tensor) -> LayerErrorStats:
    """Per-neuron statistics of a whole sample at once (first dimension = samples)."""
    acc = NeuronStatsAccumulator()
    acc.add(y_exact, y_approx)
    return acc.finish()


class PerNeuronErrorModel(nn.Module):
    """P2's generator: returns ξ = σ_ε (ρ s₁ + √(1−ρ²) s₂) + μ_ε for a batch y [B, *shape].

    s₁ = (y − μ_y)/σ_y uses the calibration μ_y, σ_y (constants), so the gradient through ξ is exactly
    σ_ε ρ / σ_y per neuron; s₂ is fresh standard normal noise on every call. Computed in the expanded form
    slope·y + offset + a₂·s₂ (fewer tensor ops per training step; the same numbers).
    """

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
        live = std_y > _MIN_STD
        rho = torch.where(live, corr, torch.zeros_like(corr)).clamp(-1.0, 1.0)
        inv_std_y = torch.where(live, 1.0 / std_y.clamp_min(_MIN_STD), torch.zeros_like(std_y))
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
    from dse.multipliers.core import exact_table, operand_values

    lut = np.asarray(lut, dtype=np.int64)
    exact = exact_table(signed).astype(np.int64)
    mask = exact != 0
    if weight_magnitude_only:
        w = operand_values(signed)
        mask &= ((w >= 0) & (w <= 127))[None, :]
    rel = (lut[mask] - exact[mask]) / exact[mask]
    return float(rel.mean()), float(rel.std())
