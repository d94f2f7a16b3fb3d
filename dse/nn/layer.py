"""`ApproxLayer`: a conv/linear layer whose products can go through a table, with switchable modes.

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

Modes (`Mode`): `float` (the plain float layer), `quant` (fake-quant with straight-through gradients;
activation ranges follow an EMA while training unless `freeze_ranges`), `lut` (behavioural simulation
through `dse.kernels`; when gradients are needed y = y_lut + (y_quant − y_quant.detach()): the table's
value, the exact product's gradient), `agn` (quant output plus, when training, n = z·std(y)·σ_l, std over
the whole batch output before bias, not detached), `errmodel` (quant output plus `self.errmodel(y)`).
AGN noise and error-model ξ are added to the pre-bias output y (= acc·output_scale); since both are centred
on/compared with the exact pre-activation output, adding the bias before or after makes no difference to
ε = ỹ − y, and pre-bias keeps the units of dse.errors.

The per-kind parts (the convolution or GEMM, the exact chunked sums, the kernel's prepared object) live in
`ApproxConv2d` (dse.nn.conv) and `ApproxLinear` (dse.nn.linear).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import nn

from dse.multipliers.core import Multiplier
from dse.nn.compensation import BIAS, WEIGHTS
from dse.nn.exact import chunk_bound
from dse.nn.state import (
    LutState,
    PreparedKernel,
    PreparedTables,
    QKey,
    QState,
    build_lut_state,
    build_qstate,
    qstate_key,
    table_key,
)
from dse.quant import (
    ActivationQuantizer,
    MultiplierOrTable,
    QuantFormat,
    centred_codes_ste,
    centred_weight_codes_ste,
    check_multiplier_format,
    raw_table,
)
from dse.util import UserError


def _remedied_key(multiplier: MultiplierOrTable | None, remedy: str | None) -> str:
    """The prepared-table key of `multiplier` with `remedy` (dse.nn.compensation): its own table's key,
    "+bias" / "+weights" appended for a remedied variant."""
    return table_key(multiplier) + ("" if remedy is None else "+" + remedy)


class Mode(str, Enum):
    """What an approximate layer computes (see the module docstring); equal to its string value, so
    `set_mode(model, "lut")` and `set_mode(model, Mode.LUT)` are the same."""

    FLOAT = "float"
    QUANT = "quant"
    LUT = "lut"
    AGN = "agn"
    ERRMODEL = "errmodel"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def _missing_(cls, value: object) -> Mode:
        raise ValueError(f"mode: expected one of {', '.join(m.value for m in cls)}, got {value!r}")


class ApproxLayer(nn.Module):
    """Base of `ApproxConv2d` / `ApproxLinear`: a conv/linear whose products can go through a table.

    Public attributes: `name` (module path in the converted model), `kind` ("conv"|"linear"), `mode`,
    `fmt`, `multiplier` (None = exact), `fan_in` (K), `macs` (per sample; None before the first forward),
    `weight_shape`, `groups`, `agn_sigma` (learned σ_l), `errmodel` (module or None), `freeze_ranges`,
    `act_rule` ("symmetric"|"relu"|"shifted", see dse.quant).
    """

    kind = ""
    out_positions: torch.Tensor
    negative_clipped: torch.Tensor

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, fmt: QuantFormat, name: str = ""
    ) -> None:
        """`weight` / `bias`: the wrapped layer's Parameters, shared (not copied)."""
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.fmt = fmt
        self.name = name
        self._mode = Mode.FLOAT
        self.multiplier: MultiplierOrTable | None = None
        self.freeze_ranges = False
        self.act_quant = ActivationQuantizer(fmt)
        self.agn_sigma = nn.Parameter(torch.tensor(0.1))
        self.errmodel: nn.Module | None = None
        # output positions per sample (conv: H_out·W_out; linear: product of middle dims); -1 = unknown
        self.register_buffer("out_positions", torch.tensor(-1, dtype=torch.int64))
        self.register_buffer("negative_clipped", torch.zeros((), dtype=torch.int64), persistent=False)
        self._positions: int | None = None  # host copy of out_positions once known
        self._state: QState | None = None
        self._luts = PreparedTables()
        # remedies (dse.nn.compensation): "bias" | "weights" | None, applied in lut mode with a multiplier;
        # they need the calibration histograms [G, K, 256]
        self.remedy: str | None = None
        self._calibration: torch.Tensor | None = None
        self._remedy_cache: dict[tuple[str, str, QKey], Any] = {}
        self.to(weight.device)

    # ----------------------------------------------------------------------------------- description
    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode | str) -> None:
        self._mode = Mode(mode)

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
        m = self.multiplier
        mult = "exact" if m is None else (m.name if isinstance(m, Multiplier) else None)
        return f"name={self.name!r}, kind={self.kind}, mode={self.mode}, fmt={self.fmt}, multiplier={mult}"

    # ----------------------------------------------------------------------------------- per kind
    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _exact_acc(self, xc: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        """Σ_k xc·wc over centred integer-valued float codes, exactly (float32 chunks or float64)."""
        raise NotImplementedError

    def _prepare(self, st: QState, table: torch.Tensor) -> PreparedKernel:
        """The kernel's prepared (weights, table) callable: codes -> Σ_k T[q_a, q_w], int32."""
        raise NotImplementedError

    def _kernel_acc(self, codes: torch.Tensor, ls: LutState) -> torch.Tensor:
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
        """Worst-case |xc·wc| of one product in this layer's format (see dse.nn.exact)."""
        return chunk_bound(self.fmt)

    def _qstate(self, device: torch.device) -> QState:
        """Cached no-grad quantization state; rebuilt when weights, ranges, device or assignment change."""
        key = qstate_key(self.weight, self.act_quant, device)
        st = self._state
        if st is not None and st.key == key:
            return st
        if not self.act_quant.is_observed:
            raise RuntimeError(
                f"layer {self.name or self.kind}: activation range not calibrated; "
                "call dse.nn.calibrate(model, batches) (or train in quant mode) first"
            )
        st = build_qstate(self.weight, self.act_quant, self.fmt, device, key)
        self._luts.keep_only(key)
        self._state = st
        return st

    def _lut_state(
        self,
        st: QState,
        multiplier: MultiplierOrTable | None,
        device: torch.device,
        remedy: str | None = None,
    ) -> LutState:
        """The cached table state of `multiplier` (None = exact) for the current quantization state, with
        `remedy` ("bias": the expected error folded into the constant correction; "weights": the
        weight-tuned table) — see dse.nn.compensation."""
        if multiplier is None:
            remedy = None
        tkey = _remedied_key(multiplier, remedy)
        ls = self._luts.lookup(tkey, st.key)
        if ls is None:
            if remedy == BIAS:  # the plain table's kernel, shared; only the constant correction differs
                assert multiplier is not None
                ls = self._lut_state(st, multiplier, device)
                corr = ls.corr - self.bias_correction(multiplier).to(device=ls.corr.device, dtype=torch.int32)
                ls = dataclasses.replace(ls, corr=corr)
            elif remedy == WEIGHTS:  # the weight-tuned table L(a, map[w]), a table of its own
                assert multiplier is not None
                table = raw_table(multiplier)[0][:, self.weight_map(multiplier)]
                ls = build_lut_state(st, table, self.fmt, self.fan_in, device, self._prepare)
            elif remedy is None:
                ls = build_lut_state(st, multiplier, self.fmt, self.fan_in, device, self._prepare)
            else:
                raise ValueError(f"layer {self.name}: remedy {remedy!r}: expected 'bias', 'weights' or None")
            self._luts.add(tkey, ls)
        return ls

    # ----------------------------------------------------------------------------------- remedies
    @property
    def calibration(self) -> torch.Tensor | None:
        """Calibration histograms [G, K, 256] (activation byte counts per unfolded input row), or None."""
        return self._calibration

    @calibration.setter
    def calibration(self, hist: torch.Tensor | None) -> None:
        if hist is not None:
            hist = hist.detach().to("cpu", torch.float64)
            if tuple(hist.shape) != (self.groups, self.fan_in, 256):
                raise ValueError(
                    f"layer {self.name}: calibration histograms {list(hist.shape)}, expected "
                    f"{[self.groups, self.fan_in, 256]}"
                )
        self._calibration = hist
        self._remedy_cache.clear()
        self._luts.clear()

    def _require_calibration(self) -> torch.Tensor:
        if self._calibration is None:
            from dse.nn.compensation import CALIBRATION_HINT

            raise UserError(f"layer {self.name}: a remedy needs calibration data; {CALIBRATION_HINT}")
        return self._calibration

    def expected_acc_error(self, multiplier: MultiplierOrTable) -> torch.Tensor:
        """c_n: the expected accumulator error per output channel on the calibration data, float64 [C_out]."""
        from dse.nn.compensation import error_table, expected_acc_error

        st = self._qstate(self.weight.device)
        key = ("c", table_key(multiplier), st.key)
        c = self._remedy_cache.get(key)
        if c is None:
            hist = self._require_calibration()
            wb = (st.w_codes.reshape(self.out_channels, -1).to(torch.int64) & 0xFF).cpu()
            c = expected_acc_error(hist, wb, error_table(multiplier, self.fmt), self.groups)
            self._remedy_cache[key] = c
        out: torch.Tensor = c
        return out

    def bias_correction(self, multiplier: MultiplierOrTable) -> torch.Tensor:
        """round(c_n), int64 [C_out]: what bias compensation subtracts from the accumulator."""
        return self.expected_acc_error(multiplier).round().to(torch.int64)

    def weight_map(self, multiplier: MultiplierOrTable) -> np.ndarray:
        """The ALWANN weight-byte map [256] of `multiplier` at this layer (dse.nn.compensation.weight_map)."""
        from dse.nn.compensation import weight_map

        key = ("w", table_key(multiplier), ())
        m = self._remedy_cache.get(key)
        if m is None:
            hist = self._require_calibration()
            m = weight_map(multiplier, hist.sum(dim=(0, 1)).numpy(), self.fmt)
            self._remedy_cache[key] = m
        out: np.ndarray = m
        return out

    def kernel_backends(self) -> list[str]:
        """Backends of the kernel prepared for the current multiplier (empty before its first lut forward)."""
        remedy = None if self.multiplier is None else self.remedy
        ls = self._luts.get(_remedied_key(self.multiplier, remedy))
        return [] if ls is None else list(ls.prepared.backends)

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

    def int_forward(
        self, in_codes: torch.Tensor, lut: MultiplierOrTable | None = None, remedy: str | None = None
    ) -> torch.Tensor:
        """The zero-point-corrected int32 accumulator for input codes; `lut` a Multiplier or raw table of the
        format (None = exact), with `remedy` ("bias" | "weights", dse.nn.compensation). Same shape as the
        layer output."""
        st = self._qstate(in_codes.device)
        with torch.no_grad():
            if lut is None:
                xc = in_codes.to(torch.float32) - st.z_a
                return self._exact_acc(xc, st.wc).round().to(torch.int32)
            check_multiplier_format(lut, self.fmt, where=f"layer {self.name}")
            return self._lut_acc(in_codes, st, self._lut_state(st, lut, in_codes.device, remedy))

    def _lut_acc(self, codes: torch.Tensor, st: QState, ls: LutState) -> torch.Tensor:
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

    def _count_negative(self, x: torch.Tensor, st: QState) -> None:
        if not self.fmt.signed and st.z_a_int == 0 and x.numel():
            self.negative_clipped += x.amin() < -0.5 * st.s_a

    def _forward_nograd(self, x: torch.Tensor) -> torch.Tensor:
        st = self._qstate(x.device)
        self._count_negative(x, st)
        xq = self.act_quant.float_codes(x, st.s_a, st.z_a)
        if self._mode is Mode.LUT:
            ls = self._lut_state(st, self.multiplier, x.device, self.remedy)
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
                ls = self._lut_state(st, self.multiplier, x.device, self.remedy)
                codes = (xc.detach() + z_a).to(self.fmt.act_dtype)
                y_lut = self._lut_acc(codes, st, ls).to(torch.float32)
                y_lut = y_lut * self._chan_view(st.out_scale)
            y = y_lut + (y - y.detach())  # value exactly y_lut, gradient of the exact product
        return self._add_noise(y)

    def _add_noise(self, y: torch.Tensor) -> torch.Tensor:
        if self._mode is Mode.AGN and self.training:
            return y + torch.randn_like(y) * y.std() * self.agn_sigma
        if self._mode is Mode.ERRMODEL and self.errmodel is not None:
            out: torch.Tensor = y + self.errmodel(y)
            return out
        return y

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy / pickle: caches (prepared kernel objects) are rebuilt on demand
        state = dict(
            super().__getstate__()  # type: ignore[no-untyped-call]
            if hasattr(super(), "__getstate__")  # object.__getstate__ exists from Python 3.11 on
            else self.__dict__
        )
        state["_state"] = None
        state["_luts"] = PreparedTables()
        state["_remedy_cache"] = {}
        return state

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ApproxLayer:
        # device/dtype moves invalidate the cache
        self.clear_cache()
        out: ApproxLayer = super()._apply(fn, *args, **kwargs)  # type: ignore[no-untyped-call]
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.clear_cache()
        self._positions = None
        super()._load_from_state_dict(*args, **kwargs)
