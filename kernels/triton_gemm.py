"""The `triton` backend's GEMM: A [G, M, K] activation codes through weight-stationary tables (CUDA).

out[g, m, n] = Σ_k T[g, k, A[g, m, k], n], with T the table of `triton_tables` (16-bit residuals or int32
entries) and the tile walk of `triton_common`. On CPU tensors the same kernel runs under Triton's
interpreter (TRITON_INTERPRET=1): tests only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from dse.kernels.triton_common import (
    Config,
    default_config,
    lookup,
    plan_launch,
    program_tile,
    runnable,
    store_tile,
)
from dse.kernels.triton_tables import TritonTables


@triton.jit  # type: ignore[untyped-decorator]  # triton ships no type information
def lut_gemm_kernel(
    # Pointers
    a_ptr: tl.tensor,  # uint8 activation codes A [G, M, K]
    t_ptr: tl.tensor,  # int16 residuals or int32 entries T [G, K, 256, N]
    c_ptr: tl.tensor,  # int32 slopes c(b) [G, K, N] (LINEAR only)
    bias_ptr: tl.tensor,  # int32 Σ_k (off(b) + 32768) [G, N] (LINEAR only)
    out_ptr: tl.tensor,  # int32 [G, M, N]
    # Sizes
    M: tl.tensor,
    N: tl.tensor,
    K: tl.tensor,
    K_SPLIT: tl.tensor,  # k steps per split (a multiple of UNROLL); SPLIT_K programs share each tile
    # Strides
    stride_ag: tl.tensor,
    stride_am: tl.tensor,
    stride_ak: tl.tensor,
    stride_og: tl.tensor,
    stride_om: tl.tensor,
    stride_on: tl.tensor,
    # Meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LINEAR: tl.constexpr,  # residual table: add a·c per lookup and the bias per output
    EVEN_N: tl.constexpr,  # N % BLOCK_N == 0: table loads need no mask (masked-off rows read code 0's row)
    UNROLL: tl.constexpr,  # k steps per loop iteration (independent gathers in flight)
    SPLIT_K: tl.constexpr,  # > 1: partial sums added with int32 atomics into a zeroed output
) -> None:
    g, split, k_lo, k_hi, offs_m, offs_n = program_tile(M, N, K, K_SPLIT, BLOCK_M, BLOCK_N, SPLIT_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_rows = a_ptr + g * stride_ag + offs_m * stride_am
    t_group = t_ptr + g * K * 256 * N + offs_n[None, :]
    c_group = c_ptr + g * K * N + offs_n
    acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.int32)
    for k0 in range(k_lo, k_hi, UNROLL):  # the launcher picks UNROLL dividing K and K_SPLIT
        for u in tl.static_range(UNROLL):
            k = k0 + u
            codes = tl.load(a_rows + k * stride_ak, mask=mask_m, other=0).to(tl.int32)
            acc = lookup(acc, t_group, c_group, codes, k, N, mask_n, LINEAR, EVEN_N)
    out = out_ptr + g * stride_og + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    store_tile(out, acc, bias_ptr + g * N + offs_n, split, mask_m, mask_n, LINEAR, SPLIT_K)


def triton_lut_matmul(a: torch.Tensor, tables: TritonTables, config: Config | None = None) -> torch.Tensor:
    """a: [G, M, K] uint8 codes, tables: TritonTables [G, K, 256, N] -> int32 [G, M, N]."""
    g, m, k = a.shape
    n = tables.t.shape[3]
    out = torch.empty(g, m, n, dtype=torch.int32, device=a.device)
    cfg = config or default_config(m, n, k, g, a.device)
    if cfg.k_major and a.stride(1) != 1:
        a = a.transpose(1, 2).contiguous().transpose(1, 2)  # same [G, M, K] view, k-major storage
    launch = plan_launch(tables, out, g, m, k, cfg)
    if launch is None:
        return out
    runnable(lut_gemm_kernel, a.device)[launch.grid](
        a,
        *tables.pointers(),
        out,
        m,
        n,
        k,
        launch.k_split,
        *a.stride(),
        *out.stride(),
        **launch.meta,
    )
    return out
