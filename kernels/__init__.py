"""Approximate GEMM / convolution kernels (installed as `dse.kernels`).

One contract, bit-exact for every backend, any table, any K:

    approx_matmul(a, b, lut)  -> int32 [M, N],  out[m, n] = Σ_k lut[a[m, k] & 0xFF, b[k, n] & 0xFF]
    approx_conv2d(x, w, lut, stride, padding, dilation, groups, pad_code=…) -> int32 [N, C_out, H_out, W_out]

a / x are activation codes, b / w weight codes, each int8 or uint8 independently (the table is indexed by the
byte); the table is lut[activation, weight], int32 [256,256] (torch or numpy; moved to the operands' device).
Sums wrap like int32 arithmetic (they never do for 8-bit products at K < 33,000).

Backends (`backend=`): "reference" (brute force), "cpu" (weight-stationary embedding_bag, direct gather for
tiny problems), "lowrank" (exact integer factorisation of a low-rank table into float GEMMs), "bitplane"
(partial-product tables as exact int8 GEMMs on oneDNN; CPU only), "triton" (CUDA; CPU under
TRITON_INTERPRET=1 for tests), "auto": the fastest of the backends that can run the table on that device, by a
one-off race at that (K, N, G) (cpu/triton always, lowrank for tables of rank cost <= 3 (CPU) / 2 (CUDA),
bitplane for partial-product tables on CPU). `chosen_backends(lut, k, device)` tells the choice.

Training: `approx_matmul_ste` / `approx_conv2d_ste` take float tensors holding code values; the value is the
table result, the gradient the exact product's.

Reusing work:
- `prepare_matmul(b, lut)` / `prepare_conv2d(w, lut, …)` return a callable holding the per-(weights, table)
  precomputation (weight-stationary tables, or low-rank factors applied to the weights). A layer keeps one
  per table it is evaluated with; its `nbytes` says what it costs; nothing is cached globally except the
  factorisations and plane decompositions of tables (≤ 256 tables each, a few KB per table) and the winner
  of each backend race.
- Batched candidates: `approx_matmul_multi(a, [(b_i, lut_i), …])` / `approx_conv2d_multi(x, [(w_i, lut_i), …],
  …)` evaluate one activation tensor against several (weights, table) pairs -> list of outputs, bit-exact
  equal to separate calls. The im2col, the activation indices and one embedding_bag pass over the
  concatenated weight tables are shared; low-rank candidates run as their own GEMMs.
  `prepare_matmul_multi` / `prepare_conv2d_multi` keep that preparation for many batches (`.apply_all`). For a population of
  per-layer assignments, group the candidates by the multiplier they give a layer and call the layer once
  per distinct input (same input => one call for all distinct tables of that layer).

Layout, top down: `api` (the entry points: validation, then) -> `prepared` (what a layer keeps: candidates
grouped by backend) -> `dispatch` (which backend: explicit, or auto's race) -> `plans` (prepared weights per
backend) -> the backends `reference`, `cpu`, `lowrank`, `bitplane`, `triton_gemm` / `triton_conv` (with
`triton_common`, `triton_tables`); `conv` lowers a convolution to the grouped GEMM, `geometry` is its shape,
`checks` validates, `timing` times; `ste` (training) sits on `api`, `bench` (`dse bench kernels`) on all.
"""

from dse.kernels.api import (
    approx_conv2d,
    approx_conv2d_multi,
    approx_matmul,
    approx_matmul_multi,
    prepare_conv2d,
    prepare_conv2d_multi,
    prepare_matmul,
    prepare_matmul_multi,
)
from dse.kernels.bitplane import BitPlanes, bitplane_planes
from dse.kernels.checks import BACKENDS, KernelInputError
from dse.kernels.dispatch import CPU_LOWRANK_MAX_COST, chosen_backends, triton_usable
from dse.kernels.lowrank import LowRankFactors, lowrank_factors
from dse.kernels.prepared import PreparedConv2d, PreparedMatmul
from dse.kernels.reference import approx_conv2d_reference, approx_matmul_reference
from dse.kernels.ste import approx_conv2d_ste, approx_matmul_ste

__all__ = [
    "BACKENDS",
    "BitPlanes",
    "CPU_LOWRANK_MAX_COST",
    "KernelInputError",
    "LowRankFactors",
    "PreparedConv2d",
    "PreparedMatmul",
    "approx_conv2d",
    "approx_conv2d_multi",
    "approx_conv2d_reference",
    "approx_conv2d_ste",
    "approx_matmul",
    "approx_matmul_multi",
    "approx_matmul_reference",
    "approx_matmul_ste",
    "bitplane_planes",
    "chosen_backends",
    "lowrank_factors",
    "prepare_conv2d",
    "prepare_conv2d_multi",
    "prepare_matmul",
    "prepare_matmul_multi",
    "triton_usable",
]
