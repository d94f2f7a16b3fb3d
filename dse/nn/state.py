"""A layer's no-grad quantization state and its LRU of prepared tables.

`QState` holds everything a no-grad forward needs that depends only on the weights, the observed activation
range and the device (the codes, the scales, the zero points); it is rebuilt when its `qstate_key` changes.
`LutState` is one table's share of a `lut`-mode forward for one `QState`: the effective table, the constant
zero-point correction per output channel and the kernel's prepared (weights, table) object.
`PreparedTables` keeps a few `LutState`s per layer, keyed by `table_key` (the search switches among a few
multipliers), bounded in entries and bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

import torch

from dse.multipliers.core import Multiplier, table_sha256
from dse.quant import (
    ActivationQuantizer,
    MultiplierOrTable,
    QuantFormat,
    effective_lut,
    exact_lut,
    quantize_weight,
)

LUT_CACHE_ENTRIES = 8  # prepared tables a layer keeps (the search switches among a few multipliers)
LUT_CACHE_BYTES = 96 * 2**20  # ... within this many bytes per layer (always at least the current one)

QKey = tuple[Hashable, ...]


class PreparedKernel(Protocol):
    """What `dse.kernels.prepare_matmul` / `prepare_conv2d` return: codes -> Σ_k T[q_a, q_w] (int32)."""

    @property
    def nbytes(self) -> int: ...

    @property
    def backends(self) -> list[str]: ...

    def __call__(self, codes: torch.Tensor, /) -> torch.Tensor: ...


def table_key(multiplier: MultiplierOrTable | None) -> str:
    """The identity of a layer's table: "exact" for None, else the table's sha256 (a Multiplier's own)."""
    if multiplier is None:
        return "exact"
    if isinstance(multiplier, Multiplier):
        return multiplier.sha256
    t = multiplier.detach().cpu().numpy() if isinstance(multiplier, torch.Tensor) else multiplier
    return table_sha256(t)


@dataclass(eq=False)
class QState:
    """A layer's cached no-grad quantization state (valid while `key` is unchanged).

    `wq` weight codes as float, `wc` = wq − z_w (centred), `w_codes` in the kernel's dtype, `out_scale`
    = s_a·s_w [C_out] float32, `zw_int` = z_w as int32; `b_matrix` the linear layer's [K, N] weight codes,
    built on first use.
    """

    key: QKey
    s_a: torch.Tensor
    z_a: torch.Tensor
    z_a_int: int
    wq: torch.Tensor
    wc: torch.Tensor
    w_codes: torch.Tensor
    z_w: torch.Tensor
    out_scale: torch.Tensor
    zw_int: torch.Tensor
    b_matrix: torch.Tensor | None = None


def qstate_key(weight: torch.Tensor, act_quant: ActivationQuantizer, device: torch.device) -> QKey:
    """Changes whenever the weights or the activation range are modified (in place or replaced) or moved."""
    return (
        weight._version,
        weight.data_ptr(),
        act_quant.running_min._version,
        act_quant.running_max._version,
        act_quant.running_min.data_ptr(),
        str(device),
    )


def build_qstate(
    weight: torch.Tensor, act_quant: ActivationQuantizer, fmt: QuantFormat, device: torch.device, key: QKey
) -> QState:
    """The quantization state of `weight` and the (observed) activation range, on `device`."""
    with torch.no_grad():
        s_a, z_a = act_quant.qparams()
        wq, s_w, z_w = quantize_weight(weight.detach(), fmt)
        wq_d = wq.to(device)
        z_w_d = z_w.to(device)
        return QState(
            key=key,
            s_a=s_a.to(device),
            z_a=z_a.to(device),
            z_a_int=int(z_a),
            wq=wq_d,
            wc=wq_d - z_w.view((-1,) + (1,) * (wq.dim() - 1)).to(device),
            w_codes=wq_d.to(fmt.weight_dtype),
            z_w=z_w_d,
            out_scale=(s_a * s_w).to(device=device, dtype=torch.float32),
            zw_int=z_w_d.to(torch.int32),
        )


@dataclass(frozen=True, eq=False)
class LutState:
    """One table's share of a lut-mode forward, valid for the `QState` whose key is `qkey`."""

    qkey: QKey
    table: torch.Tensor  # the effective table, int32 [256, 256] (dse.quant.effective_lut)
    corr: torch.Tensor  # −z_a·Σ_k q_w + K·z_a·z_w per output channel, int32
    prepared: PreparedKernel
    nbytes: int


def build_lut_state(
    st: QState,
    multiplier: MultiplierOrTable | None,
    fmt: QuantFormat,
    fan_in: int,
    device: torch.device,
    prepare: Callable[[QState, torch.Tensor], PreparedKernel],
) -> LutState:
    """The table state of `multiplier` (None = exact) for `st`; `prepare` builds the layer's kernel object."""
    table = (exact_lut(fmt) if multiplier is None else effective_lut(multiplier, fmt)).to(device)
    # constant zero-point correction per output channel: −z_a·Σ_k q_w + K·z_a·z_w
    col = st.wq.reshape(st.wq.shape[0], -1).sum(dim=1).round().to(torch.int64)
    corr = -st.z_a_int * col + fan_in * st.z_a_int * st.z_w.to(torch.int64)
    prepared = prepare(st, table)
    return LutState(
        qkey=st.key, table=table, corr=corr.to(torch.int32), prepared=prepared, nbytes=int(prepared.nbytes)
    )


class PreparedTables:
    """LRU of `LutState`s by `table_key`: at most LUT_CACHE_ENTRIES within LUT_CACHE_BYTES, always at least
    the newest."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, LutState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tkey: str) -> LutState | None:
        """The entry of a table key, whatever its state (no LRU update)."""
        return self._entries.get(tkey)

    def lookup(self, tkey: str, qkey: QKey) -> LutState | None:
        """The entry of a table key if it belongs to quantization state `qkey` (marks it recently used)."""
        ls = self._entries.get(tkey)
        if ls is not None and ls.qkey == qkey:
            self._entries.move_to_end(tkey)
            return ls
        return None

    def add(self, tkey: str, ls: LutState) -> None:
        self._entries[tkey] = ls
        while len(self._entries) > 1 and (
            len(self._entries) > LUT_CACHE_ENTRIES
            or sum(v.nbytes for v in self._entries.values()) > LUT_CACHE_BYTES
        ):
            self._entries.popitem(last=False)

    def keep_only(self, qkey: QKey) -> None:
        """Drop the entries of every other quantization state."""
        for stale in [k for k, v in self._entries.items() if v.qkey != qkey]:
            del self._entries[stale]

    def clear(self) -> None:
        self._entries.clear()
