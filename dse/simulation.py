"""Behavioural simulation of one assignment: the accuracy of the prepared network when each layer multiplies
through its assigned multiplier's table (`lut` mode, bit-exact integer sums).

The one place every stage measures an assignment (AGN's mapped points, retraining's before/after, `dse
evaluate`); the search's batched evaluator (`dse.search.model_sim`) computes the same numbers faster.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dse.data import Split
from dse.multipliers import Multiplier
from dse.nn import approximated
from dse.prepare import Prepared
from dse.train import evaluate_accuracy

__all__ = ["simulate_accuracy"]


def simulate_accuracy(
    prepared: Prepared,
    assignment: Mapping[str, Multiplier],
    split: Split | str = Split.VAL,
    *,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy (fraction) of `prepared.model` on `split` with `assignment` ({layer: Multiplier};
    layers not named multiply exactly), in `lut` mode; the model's modes and multipliers are restored
    afterwards, also on an error. `device`: where the batches go (default `prepared.device`, where the
    model is)."""
    model = prepared.model
    with approximated(model, assignment):
        return float(
            evaluate_accuracy(
                model,
                prepared.splits[split],
                prepared.study.train.eval_batch_size,
                prepared.device if device is None else device,
            )
        )
