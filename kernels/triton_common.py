"""What the Triton GEMM (`triton_gemm`) and implicit-im2col conv (`triton_conv`) kernels share.

Device side, `@triton.jit` helpers: the output tile a program owns (`program_tile`), one k step's table
gather with the residual scheme's a·c term (`lookup`), and the tile's bias add and store (`store_tile`),
split-K partial sums added with int32 atomics. Host side: the tile configuration measured on an H100
(`Config`, `default_config`), the launch arithmetic (`plan_launch`) and the kernel runner for CPU tensors
under Triton's interpreter (`runnable`).

Design. Each program owns a BLOCK_M × BLOCK_N output tile and walks k: it gets the BLOCK_M activation codes
of column k and gathers the rows T[g, k, a_m, n0:n0+BLOCK_N] of the weight-stationary table
(`triton_tables`). Each row is BLOCK_N contiguous entries (one coalesced segment) instead of scattered reads
of a 256 KB table, and every program at the same k reads the same 256·BLOCK_N slice, so the gathers hit
L1/L2. Accumulation is int32 (wrapping): no float rounding at any K.

The helpers call only triton.language builtins (`tl.full`, not `tl.zeros`, which is itself a jit function),
so `runnable` can interpret them when triton was imported without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from dse.kernels.triton_tables import TritonTables

MIN_K_PER_SPLIT = 64  # split-K: at least this many k steps per program


# ------------------------------------------------------------------------------------------ device side
@triton.jit  # type: ignore[untyped-decorator]  # triton ships no type information
def program_tile(
    M: tl.tensor,
    N: tl.tensor,
    K: tl.tensor,
    K_SPLIT: tl.tensor,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_K: tl.constexpr,
) -> tuple[tl.tensor, ...]:
    """(g, split, k_lo, k_hi, offs_m, offs_n) of this program: group g (int64), its k steps
    [k_lo, k_hi) of split `split`, and the tile's output rows and columns."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    g = (pid_z // SPLIT_K).to(tl.int64)
    split = pid_z % SPLIT_K
    k_lo = split * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return g, split, k_lo, k_hi, offs_m, offs_n


@triton.jit  # type: ignore[untyped-decorator]  # triton ships no type information
def lookup(
    acc: tl.tensor,
    t_group: tl.tensor,
    c_group: tl.tensor,
    codes: tl.tensor,
    k: tl.tensor,
    N: tl.tensor,
    mask_n: tl.tensor,
    LINEAR: tl.constexpr,
    EVEN_N: tl.constexpr,
) -> tl.tensor:
    """acc + the table rows of k step `k` for the tile's activation codes (int32 [BLOCK_M]), plus
    codes·c(b) for residual tables. t_group: the group's table at the tile's columns
    (t_ptr + g·K·256·N + offs_n[None, :]); c_group: its slopes (c_ptr + g·K·N + offs_n)."""
    rows = (k * 256 + codes) * N  # int32: the launcher keeps K·256·N < 2^31
    if EVEN_N:
        t = tl.load(t_group + rows[:, None])
    else:
        t = tl.load(t_group + rows[:, None], mask=mask_n[None, :], other=0)
    acc += t.to(tl.int32)
    if LINEAR:
        c = tl.load(c_group + k * N, mask=mask_n, other=0)
        acc += codes[:, None] * c[None, :]
    return acc


@triton.jit  # type: ignore[untyped-decorator]  # triton ships no type information
def store_tile(
    out: tl.tensor,
    acc: tl.tensor,
    bias: tl.tensor,
    split: tl.tensor,
    mask_m: tl.tensor,
    mask_n: tl.tensor,
    LINEAR: tl.constexpr,
    SPLIT_K: tl.constexpr,
) -> None:
    """Write the tile's sums to the pointers `out` [BLOCK_M, BLOCK_N]: residual tables add the bias
    (bias_ptr + g·N + offs_n) once, in split 0; split-K programs add with int32 atomics into a zeroed output,
    exact whatever order the splits arrive in."""
    if LINEAR:
        if split == 0:
            acc += tl.load(bias, mask=mask_n, other=0)[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])
    else:
        tl.atomic_add(out, acc, mask=mask_m[:, None] & mask_n[None, :])


# -------------------------------------------------------------------------------------------- host side
@dataclass(frozen=True)
class Config:
    """A tile configuration (scripts/triton_sweep.py times them)."""

    block_m: int
    block_n: int
    num_warps: int
    unroll: int = 1  # k steps per loop iteration (independent gathers in flight)
    k_major: bool = False  # activations k-major (one coalesced load per k); copied if they are not (GEMM)
    split_k: int = 1  # programs sharing one output tile, each over a slice of K (int32 atomics)

    def unroll_for(self, k: int) -> int:
        """The largest unroll <= self.unroll that divides K (the kernels have no remainder loop)."""
        u = self.unroll
        while k % u:
            u -= 1
        return u


def default_config(m: int, n: int, k: int, groups: int, device: torch.device) -> Config:
    """Measured on an H100 (scripts/triton_sweep.py, docs/ARCHITECTURE.md): 4096-entry tiles of 2 warps,
    BLOCK_N = the layer's N up to 64 (16 at least), row-major activations, no unrolling — within 6 % of the
    best of 100+ configurations for N = 32 and 64, 1.6x off it for N = 16 at K = 144 (where k-major codes
    win). When the tiles cannot fill the GPU (few rows, deep K) the K loop is split across programs."""
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    block_m = 4096 // block_n
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n) * groups
    split = 1
    if device.type == "cuda":
        # several 2-warp programs per multiprocessor
        want = 4 * torch.cuda.get_device_properties(device).multi_processor_count
        if tiles < want and k >= 2 * MIN_K_PER_SPLIT:
            split = min(triton.cdiv(want, tiles), k // MIN_K_PER_SPLIT)
    return Config(block_m, block_n, num_warps=2, split_k=split)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the grid (row tiles, column tiles, groups · splits), the k steps per split and the
    meta-parameters both kernels take."""

    grid: tuple[int, int, int]
    k_split: int
    meta: dict[str, int | bool]


def plan_launch(
    tables: TritonTables, out: torch.Tensor, g: int, m: int, k: int, cfg: Config
) -> Launch | None:
    """The launch computing `out` (M rows, N = the table's columns, per group) with `cfg`, or None when there
    is nothing to run (empty output, or K = 0: then `out` is zeroed here). Zeroes `out` for split-K."""
    n = tables.t.shape[3]
    if m == 0 or n == 0 or g == 0:
        return None
    if k == 0:
        out.zero_()
        return None
    if k * 256 * n >= 2**31:
        raise ValueError(f"triton backend: K·256·N = {k * 256 * n} table entries per group exceed 2^31")
    unroll = cfg.unroll_for(k)
    k_split = triton.cdiv(triton.cdiv(k, cfg.split_k), unroll) * unroll
    split = triton.cdiv(k, k_split)
    if split > 1:
        out.zero_()
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), g * split)
    meta: dict[str, int | bool] = {
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "LINEAR": tables.linear,
        "EVEN_N": n % cfg.block_n == 0,
        "UNROLL": unroll,
        "SPLIT_K": split,
        "num_warps": cfg.num_warps,
    }
    return Launch(grid, k_split, meta)


_INTERPRETED: dict[object, Any] = {}


def runnable(kernel: Any, device: torch.device) -> Any:
    """`kernel` for CUDA tensors; for CPU tensors the kernel under Triton's interpreter, whatever
    TRITON_INTERPRET was when triton.jit ran (a test sets it, possibly after this module was imported): the
    kernel's function with its module's @triton.jit helpers interpreted too."""
    if device.type == "cuda":
        return kernel
    fn = kernel.fn
    if fn not in _INTERPRETED:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        scope = {
            name: InterpretedFunction(value.fn) if isinstance(value, JITFunction) else value
            for name, value in fn.__globals__.items()
        }
        _INTERPRETED[fn] = InterpretedFunction(types.FunctionType(fn.__code__, scope, fn.__name__))
    return _INTERPRETED[fn]
