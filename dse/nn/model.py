"""Model-level operations on approximate layers: convert a model, list its layers, set modes, assign
multipliers, simulate an assignment, calibrate activation ranges, describe the layers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dse.multipliers.core import Multiplier
from dse.nn import compensation
from dse.nn.conv import ApproxConv2d
from dse.nn.layer import ApproxLayer, Mode
from dse.nn.linear import ApproxLinear
from dse.quant import MultiplierOrTable, QuantFormat, check_multiplier_format
from dse.util import UserError


@dataclass(frozen=True)
class LayerInfo:
    """What the search, energy model and reports know of a layer. `macs` per sample (None before a forward)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    fan_in: int
    macs: int | None
    groups: int = 1
    act_rule: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        return d


def _wrap(module: nn.Conv2d | nn.Linear, fmt: QuantFormat, name: str) -> ApproxLayer:
    if isinstance(module, nn.Conv2d):
        return ApproxConv2d(module, fmt, name)
    return ApproxLinear(module, fmt, name)


def convert(model: nn.Module, fmt: QuantFormat) -> nn.Module:
    """Replace every nn.Conv2d / nn.Linear (any nesting, grouped/depthwise) by an ApproxLayer, in place.

    The wrappers share the original Parameters (optimizers and state_dict keys `…weight`/`…bias` stay
    valid) and start in `float` mode; then `calibrate`, `set_mode(model, "quant")`. Returns the model (or
    the wrapper, if `model` itself is a Conv2d/Linear).
    """
    if isinstance(model, ApproxLayer):
        return model
    if isinstance(model, (nn.Conv2d, nn.Linear)):
        return _wrap(model, fmt, "")
    wrapped: dict[int, ApproxLayer] = {}
    for parent_name, parent in list(model.named_modules()):
        if isinstance(parent, ApproxLayer):
            continue
        for child_name, child in list(parent.named_children()):
            if isinstance(child, ApproxLayer) or not isinstance(child, (nn.Conv2d, nn.Linear)):
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if id(child) not in wrapped:
                wrapped[id(child)] = _wrap(child, fmt, full)
            setattr(parent, child_name, wrapped[id(child)])
    return model


def approx_layers(model: nn.Module) -> dict[str, ApproxLayer]:
    """{name: layer} in module registration order (the forward order of the built-in models)."""
    out: dict[str, ApproxLayer] = {}
    for name, m in model.named_modules():
        if isinstance(m, ApproxLayer) and m not in out.values():
            if not m.name:
                m.name = name
            out[m.name] = m
    return out


def set_mode(model: nn.Module, mode: Mode | str) -> nn.Module:
    """Set every approximate layer's mode: a `Mode` or its value (float | quant | lut | agn | errmodel)."""
    mode = Mode(mode)
    for layer in approx_layers(model).values():
        layer.mode = mode
    return model


def assign(model: nn.Module, assignment: Mapping[str, MultiplierOrTable | None]) -> nn.Module:
    """Give each named layer its multiplier (a `Multiplier` of the model's format, or a raw table of it);
    unnamed layers get exact (None, as does an exact Multiplier)."""
    layers = approx_layers(model)
    unknown = sorted(set(assignment) - set(layers))
    if unknown:
        raise UserError(
            f"assignment: unknown layer(s) {', '.join(unknown)}; the model's layers are {', '.join(layers)}"
        )
    for name, layer in layers.items():
        mult = assignment.get(name)
        if mult is not None:
            check_multiplier_format(mult, layer.fmt, where=f"assignment of layer {name}")
            if isinstance(mult, Multiplier) and mult.is_exact:
                mult = None
        if mult is not layer.multiplier:
            layer.multiplier = mult
            layer.invalidate()
    return model


@contextmanager
def approximated(
    model: nn.Module,
    assignment: Mapping[str, Multiplier],
    remedies: Mapping[str, str] | None = None,
) -> Iterator[nn.Module]:
    """Simulate `assignment` ({layer: Multiplier}; layers not named get exact): inside the block every
    approximate layer is in `Mode.LUT` with its assigned multiplier and its remedy from `remedies`
    ({layer: "bias" | "weights"}, dse.nn.compensation; layers not named: none; `remedies=None` leaves
    every layer's `remedy` as it is); on exit (also on an exception) each layer gets back the mode,
    multiplier and remedy it had before."""
    layers = approx_layers(model)
    chosen = None if remedies is None else dict(remedies)
    unknown = sorted(set(chosen or {}) - set(layers))
    if unknown:
        raise UserError(f"remedies: unknown layer(s) {', '.join(unknown)}")
    before = {n: (layer.mode, layer.multiplier, layer.remedy) for n, layer in layers.items()}
    try:
        assign(model, assignment)
        for n, layer in layers.items():
            if chosen is not None:
                layer.remedy = chosen.get(n)
            if layer.remedy is not None and layer.multiplier is not None:
                layer._require_calibration()  # the one-line error before any forward
        set_mode(model, Mode.LUT)
        yield model
    finally:
        for n, layer in layers.items():
            mode, mult, remedy = before[n]
            if layer.multiplier is not mult:
                layer.multiplier = mult
                layer.invalidate()
            layer.mode = mode
            layer.remedy = remedy


Batches = torch.Tensor | torch.utils.data.Dataset[Any] | Iterable[Any]


def _batches(batches: Batches) -> Iterable[Any]:
    if isinstance(batches, torch.Tensor):
        return [batches]
    if isinstance(batches, torch.utils.data.Dataset) and not isinstance(
        batches, torch.utils.data.IterableDataset
    ):
        return torch.utils.data.DataLoader(batches, batch_size=256)
    return batches


def calibrate(
    model: nn.Module, batches: Batches, max_batches: int | None = None, percentile: float | None = None
) -> nn.Module:
    """Set every layer's activation range from float forwards over `batches` (tensors, (x, y) tuples, a
    DataLoader or a Dataset): min of minima, max of maxima (of each batch's percentiles with `percentile`,
    e.g. 99.99, which saturates outliers). Modes and train/eval state are restored."""
    if percentile is not None and not 50 < percentile <= 100:
        raise UserError(f"percentile: expected a value in (50, 100], got {percentile}")
    layers = approx_layers(model)
    modes = {n: layer.mode for n, layer in layers.items()}
    was_training = model.training
    device = next(iter(model.parameters())).device
    for layer in layers.values():
        layer.act_quant.reset()
        layer.act_quant.calibrating = True
        layer.act_quant.percentile = percentile
        layer.negative_clipped.zero_()
        layer.mode = Mode.FLOAT
        layer.invalidate()
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(_batches(batches)):
                if max_batches is not None and i >= max_batches:
                    break
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                model(x.to(device))
    finally:
        for n, layer in layers.items():
            layer.act_quant.calibrating = False
            layer.act_quant.percentile = None
            layer.mode = modes[n]
            layer.invalidate()
        model.train(was_training)
    missing = [n for n, layer in layers.items() if not layer.act_quant.is_observed]
    if missing:
        raise UserError(f"calibration: no data reached layer(s) {', '.join(missing)} (empty batches?)")
    return model


def calibrate_remedies(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Set every approximate layer's calibration histograms from the model's own (current-mode, usually
    `quant`) forward over `images`, in batches; the layers then compute their remedies from them."""
    layers = approx_layers(model)
    hists: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}

    def hook(mod: torch.nn.Module, args: tuple[torch.Tensor, ...], _name: str) -> None:
        inputs[_name] = args[0].detach()

    handles = [
        layer.register_forward_pre_hook(lambda m, a, _n=name: hook(m, a, _n))
        for name, layer in layers.items()
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                inputs.clear()
                model(images[i : i + batch_size])
                for name, x in inputs.items():
                    h = compensation.layer_histograms(layers[name], x)
                    hists[name] = h if name not in hists else hists[name] + h
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name, layer in layers.items():
        if name not in hists:
            raise UserError(f"layer {name}: no calibration data reached it; {compensation.CALIBRATION_HINT}")
        layer.calibration = hists[name]


def layer_infos(model: nn.Module) -> list[LayerInfo]:
    """The `LayerInfo` of every approximate layer, in `approx_layers` order (`act_rule` "" if uncalibrated)."""
    return [
        LayerInfo(
            name=n,
            kind=layer.kind,
            weight_shape=layer.weight_shape,
            fan_in=layer.fan_in,
            macs=layer.macs,
            groups=layer.groups,
            act_rule=layer.act_rule if layer.act_quant.is_observed else "",
        )
        for n, layer in approx_layers(model).items()
    ]


def negative_clipping(model: nn.Module) -> dict[str, int]:
    """Per layer with a zero-point-0 unsigned encoding: in how many forward passes since the last calibration
    negative inputs were clipped to 0 (non-zero: its calibration never saw the negatives it now gets)."""
    return {
        n: int(layer.negative_clipped)
        for n, layer in approx_layers(model).items()
        if int(layer.negative_clipped)
    }
