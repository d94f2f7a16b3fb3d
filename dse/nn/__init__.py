"""Approximate Conv2d / Linear layers with switchable modes, and the model-level operations on them.

- `dse.nn.layer`: `Mode` and `ApproxLayer`, the layer's integer semantics and forward in every mode;
  `dse.nn.conv` / `dse.nn.linear`: its two kinds, `ApproxConv2d` and `ApproxLinear`.
- `dse.nn.state`: the cached quantization state and the LRU of prepared tables (`table_key`).
- `dse.nn.exact`: exact integer accumulators from float convolutions / GEMMs (chunked sums).
- `dse.nn.model`: `convert`, `approx_layers`, `set_mode`, `assign`, `approximated`, `calibrate`,
  `layer_infos`, `negative_clipping`, `LayerInfo`, `calibrate_remedies`.
- `dse.nn.compensation`: bias compensation and weight tuning (the math; variant names "+bc" / "+wt").

Typical use: `convert(model, fmt)`, `calibrate(model, batches)`, `set_mode(model, Mode.QUANT)`, then
`with approximated(model, {layer: multiplier}): evaluate(model)`.
"""

from dse.nn.conv import ApproxConv2d
from dse.nn.layer import ApproxLayer, Mode
from dse.nn.linear import ApproxLinear
from dse.nn.model import (
    LayerInfo,
    approx_layers,
    approximated,
    assign,
    calibrate,
    calibrate_remedies,
    convert,
    layer_infos,
    negative_clipping,
    set_mode,
)
from dse.nn.state import table_key

__all__ = [
    "ApproxConv2d",
    "ApproxLayer",
    "ApproxLinear",
    "LayerInfo",
    "Mode",
    "approx_layers",
    "approximated",
    "assign",
    "calibrate",
    "calibrate_remedies",
    "convert",
    "layer_infos",
    "negative_clipping",
    "set_mode",
    "table_key",
]
