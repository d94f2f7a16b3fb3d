"""Approximate Conv2d / Linear layers with switchable modes, and `convert()` for any nn.Module.

Integer semantics (the same in every mode that quantizes). With activation codes q_a (zero point z_a),
weight codes q_w (zero point z_w, per output channel; 0 except for `affine`), the accumulator of one output
is the exact integer

    acc = Σ_k (q_a − z_a)(q_w − z_w)                                    (`quant` mode)

and the float output is  y = float32(acc) · output_scale + bias,  output_scale = s_a·s_w[c_out].
In `lut` mode every product q_a·q_w goes through the layer's effective table T (`dse.quant.effective_lut`)
and the zero-point terms are added exactly:

    acc = Σ_k T[q_a, q_w] − z_w·Σ_k q_a − z_a·Σ_k q_w + K·z_a·z_w

so an exact table gives the `quant` accumulator bit for bit (padding feeds the code of real zero, z_a,
into the table and into Σ_k q_a). For `sign-magnitude` q_w is the signed code (z_w = 0) and T carries the
sign; for `signed` z_a = z_w = 0.

Modes: `float` (the plain float layer), `quant` (fake-quant with straight-through gradients; activation
ranges follow an EMA while training unless `freeze_ranges`), `lut` (behavioural simulation through
`dse.kernels`; when gradients are needed y = y_lut + (y_quant − y_quant.detach()): the table's value, the
exact product's gradient), `agn` (quant output plus,
when training, n = z·std(y)·σ_l, std over the whole batch output before bias, not detached), `errmodel`
(quant output plus `self.errmodel(y)`). AGN noise and error-model ξ are added to the pre-bias output y
(= acc·output_scale); since both are centred on/compared with the exact pre-activation output, adding the
bias before or after makes no difference to ε = ỹ − y, and pre-bias keeps the units of dse.errors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dse.multipliers.core import table_sha256
from dse.quant import (
    ActivationQuantizer,
    QuantFormat,
    centred_codes_ste,
    centred_weight_codes_ste,
    check_multiplier_format,
    effective_lut,
    exact_lut,
    quantize_weight,
)
from dse.util import UserError

if TYPE_CHECKING:
    from dse.multipliers.core import Multiplier


class Mode(str, Enum):
    """What an approximate layer computes (see the module docstring); equal to its string value."""

    FLOAT = "float"
    QUANT = "quant"
    LUT = "lut"
    AGN = "agn"
    ERRMODEL = "errmodel"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


MODES = tuple(m.value for m in Mode)


def _as_mode(mode: Mode | str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    return Mode(mode)


_F32_EXACT = 2**24  # integer sums below this are exact in float32


def _prepare_matmul(b: torch.Tensor, table: torch.Tensor):
    """A callable a -> Σ_k T[a, b] (int32) holding the kernel's per-(weights, table) precomputation."""
    import dse.kernels as K

    if hasattr(K, "prepare_matmul"):
        return K.prepare_matmul(b, table)
    return lambda a: K.approx_matmul_reference(a, b, table)


def _prepare_conv2d(w: torch.Tensor, table: torch.Tensor, **geometry):
    import dse.kernels as K

    if hasattr(K, "prepare_conv2d"):
        return K.prepare_conv2d(w, table, **geometry)
    return lambda x: K.approx_conv2d_reference(x, w, table, **geometry)


class _QState:
    """Everything a no-grad forward needs that depends only on weights, observer buffers and assignment."""

    __slots__ = (
        "key",
        "s_a",
        "z_a",
        "z_a_int",
        "wq",
        "wc",
        "w_codes",
        "z_w",
        "out_scale",
        "zw_int",
        "b_matrix",
    )


class _LutState:
    """One table's share of a lut-mode forward: the effective table, the constant zero-point correction
    per output channel and the kernel's prepared (weights, table) object, valid for one _QState key."""

    __slots__ = ("qkey", "table", "corr", "prepared", "nbytes")


LUT_CACHE_ENTRIES = 8  # prepared tables a layer keeps (the search switches among a few multipliers)
LUT_CACHE_BYTES = 96 * 2**20  # ... within this many bytes per layer (always at least the current one)


def _table_key(multiplier: Any) -> str:
    if multiplier is None:
        return "exact"
    sha = getattr(multiplier, "sha256", None)
    if sha is None:
        t = multiplier.detach().cpu().numpy() if isinstance(multiplier, torch.Tensor) else multiplier
        sha = table_sha256(t)
    return sha


class ApproxLayer(nn.Module):
    """Base of `ApproxConv2d` / `ApproxLinear`: a conv/linear whose products can go through a table.

    Public attributes: `name` (module path in the converted model), `kind` ("conv"|"linear"), `mode`,
    `fmt`, `multiplier` (None = exact), `fan_in` (K), `macs` (per sample; None before the first forward),
    `weight_shape`, `groups`, `agn_sigma` (learned σ_l), `errmodel` (module or None), `freeze_ranges`,
    `act_rule` ("symmetric"|"relu"|"shifted", see dse.quant).
    """

    kind = ""

    def __init__(
        self, weight: nn.Parameter, bias: nn.Parameter | None, fmt: QuantFormat, name: str = ""
    ) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.fmt = fmt
        self.name = name
        self._mode = Mode.FLOAT
        self.multiplier: Any = None
        self.freeze_ranges = False
        self.act_quant = ActivationQuantizer(fmt)
        self.agn_sigma = nn.Parameter(torch.tensor(0.1))
        self.errmodel: nn.Module | None = None
        # output positions per sample (conv: H_out·W_out; linear: product of middle dims); -1 = unknown
        self.register_buffer("out_positions", torch.tensor(-1, dtype=torch.int64))
        self.register_buffer("negative_clipped", torch.zeros((), dtype=torch.int64), persistent=False)
        self._positions: int | None = None  # host copy of out_positions once known
        self._state: _QState | None = None
        self._luts: OrderedDict[str, _LutState] = OrderedDict()
        self.to(weight.device)

    # ----------------------------------------------------------------------------------- description
    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode | str) -> None:
        self._mode = _as_mode(mode)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def groups(self) -> int:
        return 1

    @property
    def fan_in(self) -> int:
        return int(self.weight[0].numel())

    @property
    def macs(self) -> int | None:
        p = int(self.out_positions)
        return None if p < 0 else p * self.fan_in * self.out_channels

    @property
    def act_rule(self) -> str:
        return self.act_quant.rule

    @property
    def pad_code(self) -> int:
        """The activation code of real zero (what padding feeds)."""
        return self._qstate(self.weight.device).z_a_int

    @property
    def output_scale(self) -> torch.Tensor:
        """s_a·s_w per output channel, float32 [C_out]: float output = acc·output_scale + bias."""
        return self._qstate(self.weight.device).out_scale

    def dequantize_acc(self, acc: torch.Tensor) -> torch.Tensor:
        """acc (int32 or integer-valued float) -> float32 output before bias, as every quantizing mode does."""
        return acc.to(torch.float32) * self._chan_view(self.output_scale.to(acc.device))

    def extra_repr(self) -> str:
        mult = getattr(self.multiplier, "name", None) if self.multiplier is not None else "exact"
        return f"name={self.name!r}, kind={self.kind}, mode={self.mode}, fmt={self.fmt}, multiplier={mult}"

    # ----------------------------------------------------------------------------------- per kind
    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _exact_acc(self, xc: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        """Σ_k xc·wc over centred integer-valued float codes, exactly (float32 chunks or float64)."""
        raise NotImplementedError

    def _prepare(self, st: _QState, table: torch.Tensor):
        """The kernel's prepared (weights, table) callable: codes -> Σ_k T[q_a, q_w], int32."""
        raise NotImplementedError

    def _kernel_acc(self, codes: torch.Tensor, ls: _LutState) -> torch.Tensor:
        return ls.prepared(codes)

    def _code_sum(self, codes: torch.Tensor, z_a: int) -> torch.Tensor:
        """Σ_k q_a per output (padding counts as z_a), int32, broadcastable to the output."""
        raise NotImplementedError

    def _chan_view(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _record_positions(self, x: torch.Tensor, y: torch.Tensor) -> None:
        raise NotImplementedError

    def gemm_operands(self, in_codes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- quant state
    def _chunk_bound(self) -> int:
        """Worst-case |Σ_k xc·wc| for this layer's K in this format."""
        amax = 128 if self.fmt.signed else 255
        wmax = 255 if self.fmt.weight_scheme == "affine" else 127
        return amax * wmax

    def _qstate(self, device: torch.device) -> _QState:
        """Cached no-grad quantization state; rebuilt when weights, ranges, device or assignment change."""
        aq = self.act_quant
        key = (
            self.weight._version,
            self.weight.data_ptr(),
            aq.running_min._version,
            aq.running_max._version,
            aq.running_min.data_ptr(),
            str(device),
        )
        st = self._state
        if st is not None and st.key == key:
            return st
        if not aq.is_observed:
            raise RuntimeError(
                f"layer {self.name or self.kind}: activation range not calibrated; "
                "call dse.nn.calibrate(model, batches) (or train in quant mode) first"
            )
        with torch.no_grad():
            st = _QState()
            st.key = key
            s_a, z_a = aq.qparams()
            wq, s_w, z_w = quantize_weight(self.weight.detach(), self.fmt)
            st.s_a, st.z_a = s_a.to(device), z_a.to(device)
            st.z_a_int = int(z_a)
            st.wq = wq.to(device)
            st.z_w = z_w.to(device)
            st.wc = st.wq - z_w.view((-1,) + (1,) * (wq.dim() - 1)).to(device)
            st.w_codes = st.wq.to(self.fmt.weight_dtype)
            st.out_scale = (s_a * s_w).to(device=device, dtype=torch.float32)
            st.zw_int = st.z_w.to(torch.int32)
            st.b_matrix = None
        for stale in [k for k, v in self._luts.items() if v.qkey != key]:
            del self._luts[stale]
        self._state = st
        return st

    def _lut_state(self, st: _QState, multiplier: Any, device: torch.device) -> _LutState:
        """The cached table state of `multiplier` (None = exact) for the current quantization state."""
        tkey = _table_key(multiplier)
        ls = self._luts.get(tkey)
        if ls is not None and ls.qkey == st.key:
            self._luts.move_to_end(tkey)
            return ls
        ls = _LutState()
        ls.qkey = st.key
        table = exact_lut(self.fmt) if multiplier is None else effective_lut(multiplier, self.fmt)
        ls.table = table.to(device)
        # constant zero-point correction per output channel: −z_a·Σ_k q_w + K·z_a·z_w
        col = st.wq.reshape(st.wq.shape[0], -1).sum(dim=1).round().to(torch.int64)
        corr = -st.z_a_int * col + self.fan_in * st.z_a_int * st.z_w.to(torch.int64)
        ls.corr = corr.to(torch.int32)
        ls.prepared = self._prepare(st, ls.table)
        ls.nbytes = int(getattr(ls.prepared, "nbytes", 0) or 0)
        self._luts[tkey] = ls
        while len(self._luts) > 1 and (
            len(self._luts) > LUT_CACHE_ENTRIES
            or sum(v.nbytes for v in self._luts.values()) > LUT_CACHE_BYTES
        ):
            self._luts.popitem(last=False)
        return ls

    def invalidate(self) -> None:
        """Re-check cached codes (they are also re-checked automatically when weights or ranges change);
        prepared tables stay cached per multiplier while the quantization state is unchanged."""
        self._state = None

    def clear_cache(self) -> None:
        """Free the cached codes and prepared tables."""
        self._state = None
        self._luts.clear()

    # ----------------------------------------------------------------------------------- public API
    def input_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Activation codes (int8 for signed, uint8 for unsigned) of a float input, with current ranges."""
        st = self._qstate(x.device)
        with torch.no_grad():
            return self.act_quant.float_codes(x, st.s_a, st.z_a).to(self.fmt.act_dtype)

    def weight_codes(self) -> torch.Tensor:
        """Weight codes, shape of the weight (int8 for symmetric/sign-magnitude, uint8 for affine)."""
        return self._qstate(self.weight.device).w_codes

    def int_forward(self, in_codes: torch.Tensor, lut: Any = None) -> torch.Tensor:
        """The zero-point-corrected int32 accumulator for input codes; `lut` a Multiplier or raw table of the
        format (None = exact). Same shape as the layer output."""
        st = self._qstate(in_codes.device)
        with torch.no_grad():
            if lut is None:
                xc = in_codes.to(torch.float32) - st.z_a
                return self._exact_acc(xc, st.wc).round().to(torch.int32)
            check_multiplier_format(lut, self.fmt, where=f"layer {self.name}")
            return self._lut_acc(in_codes, st, self._lut_state(st, lut, in_codes.device))

    def _lut_acc(self, codes: torch.Tensor, st: _QState, ls: _LutState) -> torch.Tensor:
        acc = self._kernel_acc(codes, ls)
        acc = (
            acc.add_(self._chan_view(ls.corr)) if acc.dtype == torch.int32 else acc + self._chan_view(ls.corr)
        )
        if self.fmt.weight_scheme == "affine":
            acc = acc - self._chan_view(st.zw_int) * self._code_sum(codes, st.z_a_int)
        return acc

    # ----------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        aq = self.act_quant
        if aq.calibrating:
            aq.observe(x)
        if self._mode is Mode.FLOAT:
            y = self._float_forward(x)
            self._record_positions(x, y)
            return y
        observing = (
            self.training and self._mode is Mode.QUANT and not self.freeze_ranges and not aq.calibrating
        )
        if observing:
            aq.observe(x)
        need_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if not need_grad:
            y = self._forward_nograd(x)
        else:
            y = self._forward_grad(x, observing)
        self._record_positions(x, y)
        if self.bias is not None:
            y = y + self._chan_view(self.bias) if y.requires_grad else y.add_(self._chan_view(self.bias))
        return y

    def _count_negative(self, x: torch.Tensor, st: _QState) -> None:
        if not self.fmt.signed and st.z_a_int == 0 and x.numel():
            self.negative_clipped += x.amin() < -0.5 * st.s_a

    def _forward_nograd(self, x: torch.Tensor) -> torch.Tensor:
        st = self._qstate(x.device)
        self._count_negative(x, st)
        xq = self.act_quant.float_codes(x, st.s_a, st.z_a)
        if self._mode is Mode.LUT:
            ls = self._lut_state(st, self.multiplier, x.device)
            acc = self._lut_acc(xq.to(self.fmt.act_dtype), st, ls)
        else:
            acc = self._exact_acc(xq.sub_(st.z_a), st.wc)
        y = acc.to(torch.float32)
        y = y.mul_(self._chan_view(st.out_scale)) if y is not acc else y * self._chan_view(st.out_scale)
        return self._add_noise(y)

    def _forward_grad(self, x: torch.Tensor, observing: bool) -> torch.Tensor:
        aq = self.act_quant
        if not aq.is_observed:
            raise RuntimeError(f"layer {self.name or self.kind}: activation range not calibrated")
        s_a, z_a = aq.qparams()
        if not observing and not self.fmt.signed and x.numel():
            with torch.no_grad():
                self.negative_clipped += (x.amin() < -0.5 * s_a) & (z_a == 0)
        xc = centred_codes_ste(x, s_a, z_a, *self.fmt.act_range)
        wc, s_w, _ = centred_weight_codes_ste(self.weight, self.fmt)
        acc = self._exact_acc(xc, wc)
        y = acc.to(torch.float32) * self._chan_view((s_a * s_w).to(torch.float32))
        if self._mode is Mode.LUT:
            with torch.no_grad():
                st = self._qstate(x.device)
                ls = self._lut_state(st, self.multiplier, x.device)
                codes = (xc.detach() + z_a).to(self.fmt.act_dtype)
                y_lut = self._lut_acc(codes, st, ls).to(torch.float32)
                y_lut = y_lut * self._chan_view(st.out_scale)
            y = y_lut + (y - y.detach())  # value exactly y_lut, gradient of the exact product
        return self._add_noise(y)

    def _add_noise(self, y: torch.Tensor) -> torch.Tensor:
        if self._mode is Mode.AGN and self.training:
            return y + torch.randn_like(y) * y.std() * self.agn_sigma
        if self._mode is Mode.ERRMODEL and self.errmodel is not None:
            return y + self.errmodel(y)
        return y

    def __getstate__(self):  # deepcopy / pickle: caches (prepared kernel objects) are rebuilt on demand
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state["_state"] = None
        state["_luts"] = OrderedDict()
        return state

    def _apply(self, fn, *args, **kwargs):  # device/dtype moves invalidate the cache
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        self._positions = None
        return super()._load_from_state_dict(*args, **kwargs)


def _exact_sum(parts: list[torch.Tensor]) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    out = parts[0].to(torch.float64)
    for p in parts[1:]:
        out = out + p.to(torch.float64)
    return out


def _round_ste(t: torch.Tensor) -> torch.Tensor:
    # the float GEMM/conv of integer codes is exact below 2^24; rounding also removes any algorithmic error
    # (cuDNN). Training values need no rounding: their exactness is not measured, the gradient is the same.
    return t if t.requires_grad else t.round()


class ApproxConv2d(ApproxLayer):
    kind = "conv"

    def __init__(self, conv: nn.Conv2d, fmt: QuantFormat, name: str = "") -> None:
        if conv.padding_mode != "zeros":
            raise UserError(
                f"layer {name}: padding_mode {conv.padding_mode!r} is not supported (use 'zeros')"
            )
        padding = conv.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # 'same'
                total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
                if any(t % 2 for t in total):
                    raise UserError(f"layer {name}: padding='same' with an even kernel is not supported")
                padding = tuple(t // 2 for t in total)
        super().__init__(conv.weight, conv.bias, fmt, name)
        self.stride = tuple(conv.stride)
        self.padding = tuple(padding)
        self.dilation = tuple(conv.dilation)
        self._groups = int(conv.groups)
        self.kernel_size = tuple(conv.kernel_size)

    @property
    def groups(self) -> int:
        return self._groups

    def _chan_view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self._groups)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, groups: int | None = None) -> torch.Tensor:
        g = self._groups if groups is None else groups
        if x.is_cuda and not (x.requires_grad or w.requires_grad):
            # cuDNN may pick Winograd/FFT algorithms, which are not exact on integers; without cuDNN the
            # convolution is im2col + GEMM (or a direct depthwise kernel): exact below 2^24. Training keeps
            # cuDNN (its value is rounded; bit-exactness matters where accuracies are measured, in no-grad).
            with torch.backends.cudnn.flags(enabled=False):
                return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, g)
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, g)

    def _exact_acc(self, xc: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        if self.fan_in * self._chunk_bound() < _F32_EXACT:
            return _round_ste(self._conv(xc, wc))
        kk = self.kernel_size[0] * self.kernel_size[1]
        per_chunk = _F32_EXACT // (kk * self._chunk_bound() + 1)
        c_in = wc.shape[1]
        if self._groups == 1 and per_chunk >= 1:
            parts = [
                _round_ste(self._conv(xc[:, i : i + per_chunk], wc[:, i : i + per_chunk]))
                for i in range(0, c_in, per_chunk)
            ]
            return _exact_sum(parts)
        return _round_ste(self._conv(xc.to(torch.float64), wc.to(torch.float64)))

    def _prepare(self, st: _QState, table: torch.Tensor):
        return _prepare_conv2d(
            st.w_codes,
            table,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self._groups,
            pad_code=st.z_a_int,
        )

    def _code_sum(self, codes: torch.Tensor, z_a: int) -> torch.Tensor:
        c_per_group = self.weight.shape[1]
        ones = torch.ones(self._groups, c_per_group, *self.kernel_size, device=codes.device)
        centred = codes.to(torch.float32) - z_a  # zero padding of centred codes = padding with z_a
        s = self._conv(centred, ones).round().to(torch.int32) + self.fan_in * z_a  # [N, groups, Ho, Wo]
        return s.repeat_interleave(self.out_channels // self._groups, dim=1)

    def _record_positions(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._positions is None:
            self._positions = int(self.out_positions)
            if self._positions < 0:
                self._positions = int(y.shape[-2] * y.shape[-1])
                self.out_positions.fill_(self._positions)

    def gemm_operands(self, in_codes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group: (A [N·H_out·W_out, K] activation codes incl. padding codes, B [K, C_out/groups] weight
        codes), in the dtypes the kernel gets (sign-magnitude: B is the signed code, the multiplier sees |B|)."""
        z = self.pad_code
        xf = in_codes.to(torch.float32)
        ph, pw = self.padding
        if ph or pw:
            xf = F.pad(xf, (pw, pw, ph, ph), value=float(z))
        cols = F.unfold(xf, self.kernel_size, dilation=self.dilation, stride=self.stride)  # [N, C·kh·kw, L]
        k = self.fan_in
        n_out = self.out_channels // self._groups
        w = self.weight_codes()
        pairs = []
        for g in range(self._groups):
            a = cols[:, g * k : (g + 1) * k, :].permute(0, 2, 1).reshape(-1, k).round().to(in_codes.dtype)
            b = w[g * n_out : (g + 1) * n_out].reshape(n_out, k).t().contiguous()
            pairs.append((a, b))
        return pairs


class ApproxLinear(ApproxLayer):
    kind = "linear"

    def __init__(self, linear: nn.Linear, fmt: QuantFormat, name: str = "") -> None:
        super().__init__(linear.weight, linear.bias, fmt, name)

    def _chan_view(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _exact_acc(self, xc: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        k = self.fan_in
        per_chunk = _F32_EXACT // (self._chunk_bound() + 1)
        if k <= per_chunk:
            return _round_ste(F.linear(xc, wc))
        parts = [
            _round_ste(F.linear(xc[..., i : i + per_chunk], wc[:, i : i + per_chunk]))
            for i in range(0, k, per_chunk)
        ]
        return _exact_sum(parts)

    def _b_matrix(self, st: _QState) -> torch.Tensor:
        if st.b_matrix is None:
            st.b_matrix = st.w_codes.t().contiguous()
        return st.b_matrix

    def _prepare(self, st: _QState, table: torch.Tensor):
        return _prepare_matmul(self._b_matrix(st), table)

    def _kernel_acc(self, codes: torch.Tensor, ls: _LutState) -> torch.Tensor:
        out = ls.prepared(codes.reshape(-1, codes.shape[-1]))
        return out.reshape(*codes.shape[:-1], out.shape[-1])

    def _code_sum(self, codes: torch.Tensor, z_a: int) -> torch.Tensor:
        return codes.to(torch.int32).sum(dim=-1, keepdim=True)

    def _record_positions(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._positions is None:
            self._positions = int(self.out_positions)
            if self._positions < 0:
                self._positions = int(math.prod(x.shape[1:-1]))
                self.out_positions.fill_(self._positions)

    def gemm_operands(self, in_codes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(A [M, K] activation codes, B [K, N] weight codes)]."""
        return [(in_codes.reshape(-1, in_codes.shape[-1]), self._b_matrix(self._qstate(in_codes.device)))]


# ------------------------------------------------------------------------------------------- model level


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


def _wrap(module: nn.Module, fmt: QuantFormat, name: str) -> ApproxLayer:
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
    mode = _as_mode(mode)
    for layer in approx_layers(model).values():
        layer.mode = mode
    return model


def assign(model: nn.Module, assignment: Mapping[str, Any]) -> nn.Module:
    """Give each named layer its multiplier (a `Multiplier` of the model's format); unnamed layers get exact."""
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
            if getattr(mult, "is_exact", False):
                mult = None
        if mult is not layer.multiplier:
            layer.multiplier = mult
            layer.invalidate()
    return model


@contextmanager
def approximated(model: nn.Module, assignment: Mapping[str, Multiplier]) -> Iterator[nn.Module]:
    """Simulate `assignment` ({layer: Multiplier}; layers not named get exact): inside the block every
    approximate layer is in `Mode.LUT` with its assigned multiplier; on exit (also on an exception) each
    layer gets back the mode and multiplier it had before."""
    layers = approx_layers(model)
    before = {n: (layer.mode, layer.multiplier) for n, layer in layers.items()}
    try:
        assign(model, assignment)
        set_mode(model, Mode.LUT)
        yield model
    finally:
        for n, layer in layers.items():
            mode, mult = before[n]
            if layer.multiplier is not mult:
                layer.multiplier = mult
                layer.invalidate()
            layer.mode = mode


def _batches(batches: Any) -> Iterable:
    if isinstance(batches, torch.Tensor):
        return [batches]
    if isinstance(batches, torch.utils.data.Dataset) and not isinstance(
        batches, torch.utils.data.IterableDataset
    ):
        return torch.utils.data.DataLoader(batches, batch_size=256)
    return batches


def calibrate(
    model: nn.Module, batches: Any, max_batches: int | None = None, percentile: float | None = None
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


def layer_infos(model: nn.Module) -> list[LayerInfo]:
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
