"""8-bit quantization: operand formats, activation observers, weight quantizers, effective tables.

Three operand formats, all 8-bit:
- `signed` / `symmetric`: int8 activations (zero point 0, codes -128..127) × int8 weights (-127..127).
- `unsigned` / `sign-magnitude`: uint8 activations × int8 weight codes in [-127, 127]; the multiplier sees
  (activation, |w|) through its unsigned table and the weight's sign is applied to the product. The kernel
  gets the *effective table* T[a, w & 0xFF] = sign(w)·lut[a, |w|] (`effective_lut`).
- `unsigned` / `affine`: uint8 activations × uint8 weights with zero points (weights per channel or per
  tensor); the zero-point corrections are exact integer terms in the accumulator (see `dse.nn.layer`).

Activations are quantized per tensor from an observed range [min, max] (always widened to contain 0, so
that real zero has an exact code, which padding feeds). In the unsigned formats the activation rule of a
layer follows from its observed range (`ActivationQuantizer.rule`):
- `relu`: the input was never negative (post-ReLU): zero point 0, codes 0..255 cover [0, max].
- `shifted`: the input can be negative (first layer on normalised images, a residual sum without ReLU):
  affine uint8 codes with zero point z = round(-min/scale) > 0, and the layer subtracts z·Σ_k w exactly in
  the accumulator. Negative inputs are never clipped to zero; only values outside the observed range
  saturate, as at the top of any range.
In the signed format the rule is `symmetric` (zero point 0, negatives carried natively).

Quantized values are produced as *float tensors holding integer codes* with straight-through gradients
(round and clamp pass the gradient inside the range, zero outside), so QAT trains through them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dse.multipliers.core import Multiplier, exact_table, table_sha256
from dse.util import UserError

MultiplierOrTable = Multiplier | np.ndarray | torch.Tensor  # a raw table: [256, 256] of the format

WEIGHT_SCHEMES = ("symmetric", "sign-magnitude", "affine")
FORMAT_NAMES = ("signed", "unsigned")
EMA_MOMENTUM = 0.01  # observer update during QAT (as torch's MovingAverageMinMaxObserver)


@dataclass(frozen=True)
class QuantFormat:
    """The operand format of a search space: signedness of the table, weight scheme, per-channel weights."""

    signed: bool
    weight_scheme: str
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.weight_scheme not in WEIGHT_SCHEMES:
            raise UserError(
                f"weight_scheme: expected one of {', '.join(WEIGHT_SCHEMES)}, got {self.weight_scheme!r}"
            )
        if self.signed and self.weight_scheme != "symmetric":
            raise UserError(f"weight_scheme: the signed format uses 'symmetric', got {self.weight_scheme!r}")
        if not self.signed and self.weight_scheme == "symmetric":
            raise UserError(
                "weight_scheme: the unsigned format uses 'sign-magnitude' or 'affine', got 'symmetric'"
            )

    @classmethod
    def from_names(
        cls, format: str, weight_scheme: str | None = None, per_channel: bool = True
    ) -> QuantFormat:
        """`QuantFormat.from_names("unsigned", "sign-magnitude")`; the scheme defaults per format."""
        if format not in FORMAT_NAMES:
            raise UserError(f"format: expected 'signed' or 'unsigned', got {format!r}")
        signed = format == "signed"
        if weight_scheme is None:
            weight_scheme = "symmetric" if signed else "sign-magnitude"
        return cls(signed=signed, weight_scheme=weight_scheme, per_channel=bool(per_channel))

    @property
    def format(self) -> str:
        return "signed" if self.signed else "unsigned"

    @property
    def act_range(self) -> tuple[int, int]:
        """Range of activation codes."""
        return (-128, 127) if self.signed else (0, 255)

    @property
    def weight_range(self) -> tuple[int, int]:
        """Range of weight codes (symmetric schemes leave -128 unused so that |w| ≤ 127)."""
        return (0, 255) if self.weight_scheme == "affine" else (-127, 127)

    @property
    def act_dtype(self) -> torch.dtype:
        return torch.int8 if self.signed else torch.uint8

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.uint8 if self.weight_scheme == "affine" else torch.int8

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "weight_scheme": self.weight_scheme, "per_channel": self.per_channel}

    def __str__(self) -> str:
        return f"{self.format}/{self.weight_scheme}{'/per-channel' if self.per_channel else ''}"


# ---------------------------------------------------------------------------------------------------------
# Effective tables


def raw_table(multiplier: MultiplierOrTable) -> tuple[np.ndarray, bool | None, str]:
    """(table int32 [256,256], signedness or None if unknown, identity) of a Multiplier or a raw table."""
    if isinstance(multiplier, Multiplier):
        return np.asarray(multiplier.lut, dtype=np.int32), bool(multiplier.signed), multiplier.sha256
    lut = (
        multiplier.detach().cpu().numpy() if isinstance(multiplier, torch.Tensor) else np.asarray(multiplier)
    )
    if lut.shape != (256, 256):
        raise ValueError(f"table must be [256, 256], got {list(lut.shape)}")
    lut = np.ascontiguousarray(lut, dtype=np.int32)
    return lut, None, table_sha256(lut)


def check_multiplier_format(
    multiplier: MultiplierOrTable, fmt: QuantFormat, where: str = "multiplier"
) -> None:
    """UserError if a Multiplier's signedness does not match the operand format (raw tables pass)."""
    if isinstance(multiplier, Multiplier) and multiplier.signed != fmt.signed:
        signed = multiplier.signed
        raise UserError(
            f"{where}: multiplier {multiplier.name} is {'signed' if signed else 'unsigned'}, "
            f"but the operand format is {fmt.format} ({fmt.weight_scheme})"
        )


_EFFECTIVE: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
_EFFECTIVE_MAX = 256  # tables (256 KB each)


def _effective(lut: np.ndarray, scheme: str) -> torch.Tensor:
    lut_t = torch.from_numpy(np.array(lut, dtype=np.int32))
    if scheme != "sign-magnitude":
        return lut_t
    byte = torch.arange(256)
    w = byte - 256 * (byte >= 128)  # the signed weight code of each byte
    eff = lut_t[:, w.abs()] * torch.sign(w).to(torch.int32)[None, :]
    return eff.to(torch.int32).contiguous()


def effective_lut(multiplier: MultiplierOrTable, fmt: QuantFormat) -> torch.Tensor:
    """The table the kernel gets, int32 [256, 256], indexed [activation_byte, weight_byte].

    signed / affine: the multiplier's table itself. sign-magnitude: T[a, w & 0xFF] = sign(w)·lut[a, |w|]
    for the int8 weight code w (so the unsigned multiplier sees |w| and the sign is applied to the product).
    `multiplier` is a `Multiplier` (its signedness is checked) or a raw [256, 256] table of the format.
    Cached by table hash; do not modify the returned tensor.
    """
    check_multiplier_format(multiplier, fmt)
    lut, _, sha = raw_table(multiplier)
    key = (sha, fmt.weight_scheme)
    table = _EFFECTIVE.get(key)
    if table is None:
        table = _EFFECTIVE[key] = _effective(lut, fmt.weight_scheme)
        while len(_EFFECTIVE) > _EFFECTIVE_MAX:
            _EFFECTIVE.popitem(last=False)
    return table


def exact_lut(fmt: QuantFormat) -> torch.Tensor:
    """The effective table of the exact multiplier of the format (T[a, w] = a·w in operand values)."""
    return effective_lut(exact_table(fmt.signed), fmt)


# ---------------------------------------------------------------------------------------------------------
# Straight-through quantizers


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity gradient."""
    if not x.requires_grad:
        return torch.round(x)
    return torch.round(x).detach() + (x - x.detach())  # value exactly round(x)


def quantize_codes(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, lo: int, hi: int
) -> torch.Tensor:
    """clamp(round(x / scale) + zero_point, lo, hi) as a float tensor of integer codes (STE gradient)."""
    return torch.clamp(ste_round(x / scale) + zero_point, lo, hi)


def centred_codes_ste(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, lo: int, hi: int
) -> torch.Tensor:
    """clamp(round(x / scale) + zp, lo, hi) − zp (per tensor, 0-d scale/zp) in one fused op, for training:
    the same values as quantize_codes − zp, gradient 1/scale inside the range and 0 outside."""
    zp = zero_point.reshape(1).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x / scale, torch.ones_like(scale).reshape(1), zp, lo, hi)


def centred_weight_codes_ste(
    w: torch.Tensor, fmt: QuantFormat
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q_w − z_w as a float tensor with STE gradient, scale [C_out], zero_point [C_out]) in one fused op."""
    scale, zp = weight_qparams(w, fmt)
    lo, hi = fmt.weight_range
    view = (-1,) + (1,) * (w.dim() - 1)
    ones = torch.ones_like(scale)
    wc = torch.fake_quantize_per_channel_affine(w / scale.view(view), ones, zp.to(torch.int32), 0, lo, hi)
    return wc, scale, zp


def _safe_scale(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s > 0, s, torch.ones_like(s))


def range_qparams(
    lo_val: torch.Tensor, hi_val: torch.Tensor, symmetric: bool, qmax_sym: int = 127
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) float tensors for a real range [lo_val, hi_val] (widened to contain 0).

    symmetric: scale = max|·| / qmax_sym, zero point 0. Otherwise uint8 affine: scale = (hi - lo) / 255,
    zero point = clamp(round(-lo / scale), 0, 255) (0 when lo ≥ 0).
    """
    lo_val = torch.clamp(lo_val, max=0.0)
    hi_val = torch.clamp(hi_val, min=0.0)
    if symmetric:
        scale = _safe_scale(torch.maximum(-lo_val, hi_val) / qmax_sym)
        return scale, torch.zeros_like(scale)
    scale = _safe_scale((hi_val - lo_val) / 255.0)
    zp = torch.clamp(torch.round(-lo_val / scale), 0, 255)
    return scale, zp


def weight_qparams(w: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (scale, zero_point), shape [C_out] (per-tensor: one value repeated)."""
    w = w.detach()
    flat = w.reshape(w.shape[0], -1)
    if fmt.per_channel:
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    else:
        lo, hi = flat.min().expand(w.shape[0]), flat.max().expand(w.shape[0])
    return range_qparams(lo.float(), hi.float(), symmetric=fmt.weight_scheme != "affine")


def quantize_weight(w: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float weight codes with STE gradient, scale [C_out], zero_point [C_out])."""
    scale, zp = weight_qparams(w, fmt)
    view = (-1,) + (1,) * (w.dim() - 1)
    lo, hi = fmt.weight_range
    codes = quantize_codes(w, scale.view(view), zp.view(view), lo, hi)
    return codes, scale, zp


# ---------------------------------------------------------------------------------------------------------
# Activation observer + quantizer


class ActivationQuantizer(nn.Module):
    """Per-tensor activation quantizer with a min/max observer; its state lives in the state_dict.

    Buffers: `running_min`, `running_max` (the observed range), `observed` (batches seen).
    `calibrating = True`: every batch widens the range (min of mins, max of maxes; with `percentile` p set,
    of each batch's (100−p)-th and p-th percentiles). Otherwise `observe` moves it by an exponential moving
    average (QAT), after the first batch initialises it.
    """

    running_min: torch.Tensor
    running_max: torch.Tensor
    observed: torch.Tensor

    def __init__(self, fmt: QuantFormat) -> None:
        super().__init__()
        self.fmt = fmt
        self.calibrating = False
        self.percentile: float | None = None  # e.g. 99.99: calibrate to that percentile instead of min/max
        self.register_buffer("running_min", torch.zeros(()))
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.int64))
        self._observed_py: bool | None = None  # host copy of observed > 0 (no device sync per forward)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        xf = x.detach().float()
        lo, hi = torch.aminmax(xf)
        if self.calibrating and self.percentile is not None and xf.numel() > 1:
            flat, n = xf.flatten(), xf.numel()
            k = min(n, max(1, math.ceil(self.percentile / 100 * n)))
            hi = torch.minimum(hi, flat.kthvalue(k).values)
            lo = torch.maximum(lo, flat.kthvalue(n + 1 - k).values)
        first = not self.is_observed
        if self.calibrating or first:
            self.running_min.copy_(lo if first else torch.minimum(self.running_min, lo))
            self.running_max.copy_(hi if first else torch.maximum(self.running_max, hi))
        else:
            self.running_min.add_(EMA_MOMENTUM * (lo - self.running_min))
            self.running_max.add_(EMA_MOMENTUM * (hi - self.running_max))
        self.observed.add_(1)
        self._observed_py = True

    def reset(self) -> None:
        self.running_min.zero_()
        self.running_max.zero_()
        self.observed.zero_()
        self._observed_py = False

    @property
    def is_observed(self) -> bool:
        if self._observed_py is None:
            self._observed_py = int(self.observed) > 0
        return self._observed_py

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._observed_py = None
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def rule(self) -> str:
        """How the layer's input is encoded: `symmetric` (signed), `relu` (zp 0) or `shifted` (zp > 0)."""
        if self.fmt.signed:
            return "symmetric"
        return "relu" if float(self.running_min) >= 0 else "shifted"

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) as 0-d float tensors on the buffers' device."""
        return range_qparams(self.running_min, self.running_max, symmetric=self.fmt.signed, qmax_sym=127)

    def float_codes(self, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        """Activation codes of x as a float tensor of integers (with the STE gradient when x needs one)."""
        lo, hi = self.fmt.act_range
        if torch.is_grad_enabled() and x.requires_grad:
            return quantize_codes(x, scale, zp, lo, hi)
        q = torch.div(x, scale)  # the same operations as quantize_codes, in place (no autograd here)
        q.round_()
        q.add_(zp)
        return q.clamp_(lo, hi)

    def extra_repr(self) -> str:
        return f"{self.fmt}, range=[{float(self.running_min):.4g}, {float(self.running_max):.4g}]"
