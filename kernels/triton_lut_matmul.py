"""The `triton` backend: a weight-stationary table-lookup GEMM kernel for CUDA.

Design. For weights B [G, K, N] and a table L the launcher builds the int32 weight-stationary table
T[g, k, a, n] = L[a, B[g, k, n]] once per (weights, table) pair (K·256·N·4 bytes: 37 MB at K=576, N=64,
which stays in an H100's 50 MB L2). Each program owns a BLOCK_M × BLOCK_N output tile and walks k: it loads
the BLOCK_M activation codes of column k and gathers the rows T[g, k, a_m, n0:n0+BLOCK_N]. Every row is
BLOCK_N contiguous int32 (one coalesced 256-byte segment) instead of BLOCK_N scattered reads of a 256 KB
table, and all tiles at the same k share the same 256·N slice, so the slice is L1/L2 resident while in use.
Accumulation is int32 (wrapping, exactly the int32 result the contract defines): no float rounding at any K.

On CPU tensors the same kernel runs under the Triton interpreter (TRITON_INTERPRET=1): tests only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 64  # output rows per program
BLOCK_N = 64  # output columns per program (one 256-byte row segment of T)


def _lut_matmul_kernel(
    a_ptr,  # uint8 [G, M, K]
    t_ptr,  # int32 [G, K, 256, N]
    out_ptr,  # int32 [G, M, N]
    M,
    N,
    K,
    stride_ag,
    stride_am,
    stride_ak,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask = mask_m[:, None] & (offs_n[None, :] < N)
    a_rows = a_ptr + g * stride_ag + offs_m * stride_am
    t_group = t_ptr + g * K * 256 * N
    acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.int32)  # tl.full, not tl.zeros: a builtin, so the
    # interpreter can run this kernel even when triton was imported without TRITON_INTERPRET=1
    for k in range(0, K):
        codes = tl.load(a_rows + k * stride_ak, mask=mask_m, other=0).to(tl.int64)
        rows = (k * 256 + codes) * N
        acc += tl.load(t_group + rows[:, None] + offs_n[None, :], mask=mask, other=0)
    out = out_ptr + g * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc, mask=mask)


lut_matmul_kernel = triton.jit(_lut_matmul_kernel)
_interpreted = None


def _kernel_for(device: torch.device):
    """The compiled kernel for CUDA; an interpreted one for CPU tensors (whatever TRITON_INTERPRET was at import)."""
    global _interpreted
    if device.type == "cuda":
        return lut_matmul_kernel
    if _interpreted is None:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreted = InterpretedFunction(_lut_matmul_kernel)
    return _interpreted


def build_triton_tables(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """pairs of (B [G, K, N] uint8 codes, lut int32 [256,256]) -> int32 T [G, K, 256, ΣN], N concatenated."""
    parts = [weight_stationary_table(b, lut) for b, lut in pairs]
    return (torch.cat(parts, dim=3) if len(parts) > 1 else parts[0]).contiguous()


def weight_stationary_table(b: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """T[g, k, a, n] = lut[a, b[g, k, n]] as int32 [G, K, 256, N]."""
    return lut.t().contiguous()[b.long()].permute(0, 1, 3, 2)


def triton_lut_matmul(a: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """a: [G, M, K] uint8 codes, tables: T [G, K, 256, N] int32 -> int32 [G, M, N]."""
    g, m, k = a.shape
    n = tables.shape[3]
    out = torch.empty(g, m, n, dtype=torch.int32, device=a.device)
    if m == 0 or n == 0 or g == 0:
        return out
    if k == 0:
        return out.zero_()
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N), g)
    _kernel_for(a.device)[grid](
        a, tables, out, m, n, k, a.stride(0), a.stride(1), a.stride(2), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N
    )
    return out
