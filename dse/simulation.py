"""Behavioural simulation of one assignment: the accuracy of the prepared network when each layer multiplies
through its assigned multiplier's table (`lut` mode, bit-exact integer sums), optionally with a remedy per
layer (bias compensation or weight tuning, `dse.nn.compensation`), computed from calibration histograms
that `ensure_calibration` takes on the training split's calibration images.

The one place every stage measures an assignment (AGN's mapped points, retraining's before/after, `dse
evaluate`); the search's batched evaluator (`dse.search.model_sim`) computes the same numbers faster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dse.data import Split
from dse.multipliers import Multiplier
from dse.nn import approx_layers, approximated, calibrate_remedies
from dse.prepare import Prepared
from dse.train import evaluate_accuracy
from dse.util import UserError, log

__all__ = ["calibration_images", "ensure_calibration", "simulate_accuracy"]


def calibration_images(dataset: Any, n: int, seed: int = 0) -> torch.Tensor:
    """A seeded sample of `n` inputs (float tensor) of a TensorDataset-like split (the layer profiles'
    and the remedies' calibration images: the same seed gives the same images)."""
    total = len(dataset)
    if total == 0:
        raise UserError("calibration data: the split is empty (layers with no sample data)")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[: min(n, total)]
    return torch.stack([dataset[int(i)][0] for i in idx])


def ensure_calibration(prepared: Prepared, *, recompute: bool = False) -> None:
    """Give every layer of `prepared.model` its calibration histograms (what bias compensation and weight
    tuning are computed from): the exactly quantized model's layer inputs on `[search]
    calibration_images` seeded training images — the layer profiles' images. Kept on the layers (in
    memory); `recompute` after the weights changed upstream (retraining)."""
    layers = approx_layers(prepared.model)
    if not recompute and all(layer.calibration is not None for layer in layers.values()):
        return
    n = prepared.study.search.calibration_images
    train = prepared.splits.train
    if train is None or len(train) == 0:
        raise UserError(
            "bias compensation / weight tuning: the run has no training split to calibrate on "
            "(`dse prepare` with [data] train_size > 0 makes it)"
        )
    log(f"remedies: calibration histograms of {len(layers)} layers on {min(n, len(train))} training images")
    images = calibration_images(train, n, seed=0).to(prepared.device)
    calibrate_remedies(prepared.model, images)


def simulate_accuracy(
    prepared: Prepared,
    assignment: Mapping[str, Multiplier],
    split: Split | str = Split.VAL,
    *,
    device: str | torch.device | None = None,
    remedies: Mapping[str, str] | None = None,
) -> float:
    """Top-1 accuracy (fraction) of `prepared.model` on `split` with `assignment` ({layer: Multiplier};
    layers not named multiply exactly), in `lut` mode, with `remedies` ({layer: "bias" | "weights"});
    the model's modes and multipliers are restored afterwards, also on an error. `device`: where the
    batches go (default `prepared.device`, where the model is)."""
    model = prepared.model
    if remedies:
        ensure_calibration(prepared)
    with approximated(model, assignment, remedies):
        return float(
            evaluate_accuracy(
                model,
                prepared.splits[split],
                prepared.study.train.eval_batch_size,
                prepared.device if device is None else device,
            )
        )
