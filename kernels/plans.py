"""Prepared weights per backend: a plan holds (weights, table) pairs prepared once for many activation batches.

Every plan runs one *grouped* GEMM, `apply(A [G, M, K] uint8) -> int32 [G, M, N_total]`, the pairs' outputs
concatenated along N in pair order (`widths` their N). A plain matmul is G = 1; a convolution is the im2col
of `dse.kernels.conv` with the groups as G, or, for the triton plan, its implicit-im2col kernel
(`apply_conv`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeAlias

import torch
from dse.kernels import bitplane, cpu, lowrank
from dse.kernels.geometry import ConvGeometry
from dse.kernels.reference import approx_matmul_reference

# (B [G, K, N] uint8 weight codes, lut int32 [256, 256] on B's device): one candidate of a plan
Pair: TypeAlias = "tuple[torch.Tensor, torch.Tensor]"

CPU_GATHER_MAX_M = 48  # one-off call with fewer activation rows: direct gather beats building weight tables
# triton: implicit im2col for groups with at least this many output channels (candidates included)
DIRECT_CONV_MIN_N = 8


class Plan:
    """Weights + table(s) prepared for one backend; `apply(A [G,M,K] uint8) -> int32 [G, M, N_total]`."""

    backend: str
    widths: tuple[int, ...]

    def __init__(self, pairs: Sequence[Pair]) -> None:
        self.widths = tuple(b.shape[2] for b, _ in pairs)

    @property
    def nbytes(self) -> int:
        """Bytes of prepared tables this plan keeps."""
        return 0

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor | None:
        """A convolution straight from x [B, C, H, W] (int32 [B, G, N_total, Ho·Wo]), or None: the caller
        runs `apply` on the im2col of x instead (what every backend but triton does)."""
        return None


class ReferencePlan(Plan):
    backend = "reference"

    def __init__(self, pairs: Sequence[Pair]) -> None:
        super().__init__(pairs)
        self.pairs = list(pairs)

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        outs = []
        for b, lut in self.pairs:
            outs.append(torch.stack([approx_matmul_reference(a[g], b[g], lut) for g in range(a.shape[0])]))
        return torch.cat(outs, dim=2)


class CpuPlan(Plan):
    """Weight-stationary embedding_bag; a first call with tiny M uses a direct gather instead (building the
    tables would cost more than the whole product); later calls build the tables once and keep them."""

    backend = "cpu"

    def __init__(self, pairs: Sequence[Pair]) -> None:
        super().__init__(pairs)
        self.pairs = list(pairs)
        self.tables: cpu.WeightTables | None = None
        self.calls = 0

    @property
    def nbytes(self) -> int:
        return self.tables.nbytes if self.tables is not None else 0

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        streamed = self.tables is not None and not self.tables.slabs  # rebuilt per call: gather if tiny
        if (self.tables is None and self.calls == 1 or streamed) and a.shape[1] < CPU_GATHER_MAX_M:
            return torch.cat([cpu.gather_matmul(a, b, lut) for b, lut in self.pairs], dim=2)
        if self.tables is None:
            self.tables = cpu.build_weight_tables(self.pairs)
        return cpu.apply_weight_tables(a, self.tables)


class PreparedPair(Protocol):
    """One (weights, table) pair prepared by a backend module (`lowrank.LowRankWeights`,
    `bitplane.BitPlaneWeights`)."""

    @property
    def nbytes(self) -> int: ...

    def apply(self, a: torch.Tensor) -> torch.Tensor: ...

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor | None: ...


class PerPairPlan(Plan):
    """Each (weights, table) pair prepared on its own by `prepare` (lowrank, bitplane), applied one after the
    other (int32 [G, M, N_i] each), outputs concatenated."""

    def __init__(
        self,
        backend: str,
        pairs: Sequence[Pair],
        prepare: Callable[[torch.Tensor, torch.Tensor], PreparedPair],
    ) -> None:
        super().__init__(pairs)
        self.backend = backend
        self.weights = [prepare(b, lut) for b, lut in pairs]

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.weights)

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        if len(self.weights) == 1:  # a one-element cat is a copy of the whole output
            return self.weights[0].apply(a)
        return torch.cat([w.apply(a) for w in self.weights], dim=2)

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor | None:
        """Convolutions without im2col: bitplane as one int8 convolution per digit level on x's masked
        planes (`BitPlaneWeights.apply_conv`), lowrank as float32 convolutions of U_j[x]
        (`LowRankWeights.apply_conv`); None when a pair cannot (then every pair runs on the im2col)."""
        outs = []
        for w in self.weights:
            y = w.apply_conv(x, geometry)
            if y is None:
                return None
            outs.append(y)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _lowrank_weights(b: torch.Tensor, lut: torch.Tensor) -> lowrank.LowRankWeights:
    factors = lowrank.lowrank_factors(lut)
    assert factors is not None, "the dispatcher gives lowrank only tables with exact factors"
    return lowrank.build_lowrank_weights(b, factors)


def _bitplane_weights(b: torch.Tensor, lut: torch.Tensor) -> bitplane.BitPlaneWeights:
    planes = bitplane.bitplane_planes(lut)
    assert planes is not None, "the dispatcher gives bitplane only partial-product tables"
    return bitplane.BitPlaneWeights(b, planes)


class TritonPlan(Plan):
    """The triton kernels (imported on first use: triton is an optional dependency, absent off Linux)."""

    backend = "triton"

    def __init__(self, pairs: Sequence[Pair]) -> None:
        from dse.kernels.triton_tables import build_triton_tables

        super().__init__(pairs)
        self.tables = build_triton_tables(list(pairs))

    @property
    def nbytes(self) -> int:
        return self.tables.nbytes

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        from dse.kernels.triton_gemm import triton_lut_matmul

        return triton_lut_matmul(a, self.tables)

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor | None:
        """Implicit im2col (codes gathered from x inside the kernel, output written in NCHW order):
        int32 [B, G, N_total, Ho·Wo]; None (use im2col) when x is too large for the kernel's int32 offsets
        or the groups are narrow (depthwise: 26 vs 50 G LUT-MAC/s with im2col on an H100)."""
        from dse.kernels.triton_conv import conv_fits, triton_lut_conv

        if not conv_fits(x) or self.tables.t.shape[3] < DIRECT_CONV_MIN_N:
            return None
        return triton_lut_conv(x, self.tables, geometry)


PLANS: dict[str, Callable[[Sequence[Pair]], Plan]] = {
    "reference": ReferencePlan,
    "cpu": CpuPlan,
    "lowrank": lambda pairs: PerPairPlan("lowrank", pairs, _lowrank_weights),
    "bitplane": lambda pairs: PerPairPlan("bitplane", pairs, _bitplane_weights),
    "triton": TritonPlan,
}


def make_plan(backend: str, pairs: Sequence[Pair]) -> Plan:
    """The plan of `backend` (not "auto": `dispatch` resolves that) for these pairs."""
    return PLANS[backend](pairs)
