"""Per-neuron error statistics of an assignment, measured by behavioural simulation (P2 Eq. 5; see
docs/REFERENCES.md): μ, σ of each approximated layer's exact output y and of its error ε = ỹ − y, and
their correlation ρ, per output neuron ([C, H, W] position for conv, unit for linear).

`measure_error_stats` simulates a calibration sample of the training split; `get_error_stats` keeps the
result in `retrain/<config-hash>/errstats.pt`, so a second method on the same configuration reuses it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dse.multipliers.core import Multiplier
from dse.nn import approx_layers, approximated
from dse.prepare import Prepared
from dse.train import dataset_tensors
from dse.util import atomic_torch_save, load_checkpoint

CALIBRATION_SAMPLES = 512
STATS_VERSION = 1

# A neuron whose exact output never varies over the calibration sample has no s₁; it gets ρ = 0.
MIN_STD = 1e-12


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

    def to_dict(self) -> dict[str, Any]:
        """The fields by name (tensors kept as tensors: what `errstats.pt` stores per layer)."""
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
    def from_dict(cls, d: Mapping[str, Any]) -> LayerErrorStats:
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
        corr = torch.where(denom > MIN_STD, cov / denom.clamp_min(MIN_STD), torch.zeros_like(cov))
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


def measure_error_stats(
    prepared: Prepared,
    model: nn.Module,
    multipliers: Mapping[str, Multiplier],
    samples: int = CALIBRATION_SAMPLES,
    batch_size: int = 128,
    device: str = "cpu",
) -> dict[str, LayerErrorStats]:
    """Per-neuron error statistics of every approximated layer, from behavioural simulation.

    The network runs in `lut` mode with the assignment on the first `samples` training images; at each
    approximated layer its actual input is pushed through the exact and the approximate table
    (`int_forward`), so ε is the layer's own error on the inputs it really sees.
    """
    layers = approx_layers(model)
    active = {n: m for n, m in multipliers.items() if not m.is_exact}
    accs = {n: NeuronStatsAccumulator() for n in active}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(layer: Any, args: tuple[torch.Tensor, ...]) -> None:
            with torch.no_grad():
                codes = layer.input_codes(args[0])
                exact = layer.dequantize_acc(layer.int_forward(codes, None))
                approx = layer.dequantize_acc(layer.int_forward(codes, active[name]))
                accs[name].add(exact.cpu(), approx.cpu())

        return hook

    handles = [layers[n].register_forward_pre_hook(hook_for(n)) for n in active]
    x_train = dataset_tensors(prepared.splits.train)[0]
    n = min(samples, len(x_train))
    try:
        with approximated(model, multipliers):
            model.eval()
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    model(x_train[start : min(n, start + batch_size)].to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: acc.finish() for name, acc in accs.items()}


def get_error_stats(
    prepared: Prepared,
    model: nn.Module,
    multipliers: Mapping[str, Multiplier],
    out_dir: Path,
    samples: int = CALIBRATION_SAMPLES,
    device: str = "cpu",
) -> tuple[dict[str, LayerErrorStats], float]:
    """(statistics, seconds spent measuring them): from `out_dir/errstats.pt` when it holds this
    assignment's layers (0 seconds), else measured and stored there."""
    path = out_dir / "errstats.pt"
    if path.exists():
        blob = load_checkpoint(path, "error statistics")
        if blob.get("version") == STATS_VERSION and set(blob["layers"]) == {
            n for n, m in multipliers.items() if not m.is_exact
        }:
            return {n: LayerErrorStats.from_dict(d) for n, d in blob["layers"].items()}, 0.0
    t0 = time.perf_counter()
    stats = measure_error_stats(prepared, model, multipliers, samples, device=device)
    seconds = time.perf_counter() - t0
    blob = {
        "version": STATS_VERSION,
        "assignment": {n: m.name for n, m in multipliers.items()},
        "samples": samples,
        "seconds": seconds,
        "layers": {n: s.to_dict() for n, s in stats.items()},
    }
    atomic_torch_save(blob, path)
    return stats, seconds
