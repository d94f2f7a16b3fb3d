"""What a layer keeps: (weights, table) candidates prepared once, applied to many activation batches.

`CandidatePlans` groups the candidates by backend (one plan each, `dispatch.choose`) and splits the plans'
concatenated outputs back per candidate; `PreparedMatmul` / `PreparedConv2d` are the public callables built
on it by `dse.kernels.api`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from dse.kernels.checks import KernelInputError, check_codes, code_bytes
from dse.kernels.conv import im2col, nchw_output
from dse.kernels.dispatch import choose
from dse.kernels.geometry import ConvGeometry
from dse.kernels.plans import Pair, Plan, make_plan


class CandidatePlans:
    """Several (weights, table) candidates sharing G and K: per-backend plans, outputs split per candidate."""

    def __init__(self, pairs: Sequence[Pair], backend: str, device: torch.device, conv: bool = False) -> None:
        self.count = len(pairs)
        self.parts: list[tuple[list[int], Plan]] = [
            (ix, make_plan(b, [pairs[i] for i in ix])) for b, ix in choose(pairs, backend, device, conv)
        ]

    @property
    def backends(self) -> list[str]:
        out = [""] * self.count
        for ix, plan in self.parts:
            for i in ix:
                out[i] = plan.backend
        return out

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for _, p in self.parts)

    def apply(self, a: torch.Tensor) -> list[torch.Tensor]:
        """A [G, M, K] uint8 codes -> [int32 [G, M, N_i]] per candidate."""
        outs: list[torch.Tensor] = [torch.empty(0)] * self.count
        for ix, plan in self.parts:
            y = plan.apply(a)
            parts = torch.split(y, list(plan.widths), dim=2)
            for i, part in zip(ix, parts):
                outs[i] = part.contiguous() if len(parts) > 1 else part
        return outs

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> list[torch.Tensor]:
        """x [B, C, H, W] uint8 codes -> [int32 [B, C_out_i, Ho, Wo]] per candidate: backends with an
        implicit-im2col kernel read x directly, the others share one im2col."""
        b = x.shape[0]
        ho, wo = geometry.checked_output_size(x.shape[2], x.shape[3])
        outs: list[torch.Tensor] = [torch.empty(0)] * self.count
        a = None
        for ix, plan in self.parts:
            y = plan.apply_conv(x, geometry)
            if y is not None:  # [B, G, N_total, Ho·Wo]
                for i, part in zip(ix, torch.split(y, list(plan.widths), dim=2)):
                    outs[i] = part.reshape(b, -1, ho, wo)
                continue
            if a is None:
                a = im2col(x, geometry)
            y = plan.apply(a)
            for i, part in zip(ix, torch.split(y, list(plan.widths), dim=2)):
                outs[i] = nchw_output(part, b, ho, wo)
        return outs


@dataclass
class _Prepared:
    """What PreparedMatmul and PreparedConv2d share: the plans of prepared (weights, table) candidates."""

    plans: CandidatePlans

    @property
    def backend(self) -> str:
        """Backend of the first (for `prepare_matmul` / `prepare_conv2d`: the only) candidate."""
        return self.plans.backends[0]

    @property
    def backends(self) -> list[str]:
        """Backend of each prepared candidate."""
        return self.plans.backends

    @property
    def nbytes(self) -> int:
        """Bytes of prepared tables held (drop the object to free them)."""
        return self.plans.nbytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_all(x)[0]

    def apply_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


@dataclass
class PreparedMatmul(_Prepared):
    """Weights b [K, N] and a table, prepared once (weight tables / factors) for many activation batches.

    `prepared(a)` == `approx_matmul(a, b, lut, backend=prepared.backend)`, without rebuilding per call.
    Holds `nbytes` of prepared tables; drop the object to free them (no global cache involved).
    """

    k: int

    def apply_all(self, a: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every prepared candidate (one for `prepare_matmul`), int32 [M, N_i] each."""
        check_codes(a, "a", 2)
        if a.shape[1] != self.k:
            raise KernelInputError(
                f"a: expected K = {self.k} columns (b has {self.k} rows), got {a.shape[1]}"
            )
        return [y[0] for y in self.plans.apply(code_bytes(a).unsqueeze(0))]


@dataclass
class PreparedConv2d(_Prepared):
    """Conv weights and a table prepared once for many input batches; `prepared(x)` == approx_conv2d(...)."""

    geometry: ConvGeometry
    in_channels: int

    def apply_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every prepared candidate, int32 [N, C_out_i, H_out, W_out] each."""
        check_codes(x, "x", 4)
        if x.shape[1] != self.in_channels:
            raise KernelInputError(f"x: expected {self.in_channels} channels, got {x.shape[1]}")
        return self.plans.apply_conv(code_bytes(x), self.geometry)
