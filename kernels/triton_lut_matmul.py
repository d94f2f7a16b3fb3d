"""The `triton` backend: a weight-stationary table-lookup GEMM kernel for CUDA.

Design. For weights B [G, K, N] and a table L the launcher builds a weight-stationary table
T[g, k, a, n] = L[a, B[g, k, n]] once per (weights, table) pair. Each program owns a BLOCK_M × BLOCK_N output
tile and walks k: it loads the BLOCK_M activation codes of column k and gathers the rows
T[g, k, a_m, n0:n0+BLOCK_N]. Each row is BLOCK_N contiguous entries (one coalesced segment) instead of
scattered reads of a 256 KB table, and every program at the same k reads the same 256·BLOCK_N slice, so the
gathers hit L1/L2. Convolutions can skip im2col: with CONV the codes of output row m = (image, position) and
k = (channel, tap) are gathered from x itself (pad code outside) and the output is stored in NCHW order.

Narrow entries. The table is stored as *residuals* in 16 bits whenever it fits: per weight code b the launcher
fits L[a, b] ≈ a·c(b) + off(b) and keeps R[a, b] = L[a, b] − a·c(b) − off(b) ∈ [0, 65535], stored as the int16
R − 32768. The kernel adds a·c for each gathered entry (one integer multiply-add, free next to the gather) and
Σ_k (off + 32768) once per output.
Every real multiplier table (exact, truncated, evolved, sign-magnitude with the weight's sign folded in) is
close to linear in the activation for each weight code, so its residuals fit, which halves the bytes every
lookup moves. Tables whose residuals do not fit (e.g. random tables in tests) keep int32 entries.

Accumulation is int32 (wrapping; the decomposition is exact modulo 2^32, so the result is exactly the int32
sum the contract defines): no float rounding at any K.

On CPU tensors the same kernel runs under the Triton interpreter (TRITON_INTERPRET=1): tests only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

RESIDUAL_MAX = 65535  # residuals are stored in 16 bits (as int16, offset by 32768)


def _lut_matmul_kernel(
    a_ptr,  # uint8 codes. GEMM: A [G, M, K] at g*stride_ag + m*stride_am + k*stride_ak; CONV: x [B, C, H, W]
    t_ptr,  # int32 or int16 [G, K, 256, N]: entries (or residuals) of the weight-stationary table
    c_ptr,  # int32 [G, K, N]: per-entry slope c(b) (LINEAR only)
    bias_ptr,  # int32 [G, N]: Σ_k (off(b) + 32768) (LINEAR only)
    out_ptr,  # int32: element (g, m, n) at g*so_g + (m // L)*so_b + (m % L)*so_l + n*so_n
    M,
    N,
    K,
    stride_ag,
    stride_am,
    stride_ak,
    K_SPLIT,  # k steps per split (a multiple of UNROLL); SPLIT_K programs share each output tile
    L,  # output rows per image (CONV: Ho·Wo; GEMM: M)
    so_g,
    so_b,
    so_l,
    so_n,
    c_g,  # CONV only, from here: channels per group, input size, output width, geometry, padding code
    h,
    w,
    wo,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    pad,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LINEAR: tl.constexpr,  # residual table: add a·c per lookup and the bias per output
    EVEN_N: tl.constexpr,  # N % BLOCK_N == 0: table loads need no mask (masked-off rows read code 0's row)
    UNROLL: tl.constexpr,  # k steps per loop iteration (independent gathers in flight)
    SPLIT_K: tl.constexpr,  # > 1: partial sums added with int32 atomics into a zeroed output
    CONV: tl.constexpr,  # implicit im2col: gather the codes of output row m, tap k from x directly
    KH: tl.constexpr,
    KW: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    g = (pid_z // SPLIT_K).to(tl.int64)
    split = pid_z % SPLIT_K
    k_lo = split * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    image = offs_m // L
    pos = offs_m % L
    if CONV:  # strides of x ride in stride_ag (image), stride_am (channel), stride_ak (row); column = 1
        ih0 = (pos // wo) * sh - ph
        iw0 = (pos % wo) * sw - pw
        a_rows = a_ptr + image * stride_ag + g * c_g * stride_am
    else:
        a_rows = a_ptr + g * stride_ag + offs_m * stride_am
    t_group = t_ptr + g * K * 256 * N + offs_n[None, :]
    c_group = c_ptr + g * K * N + offs_n
    acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.int32)  # tl.full, not tl.zeros: a builtin, so the
    # interpreter can run this kernel even when triton was imported without TRITON_INTERPRET=1
    for k0 in range(k_lo, k_hi, UNROLL):  # the launcher picks UNROLL dividing K and K_SPLIT
        for u in tl.static_range(UNROLL):
            k = k0 + u
            if CONV:  # k = (channel, tap row, tap column), the order of the weights' [C/G, kh, kw]
                ih = ih0 + ((k % (KH * KW)) // KW) * dh
                iw = iw0 + (k % KW) * dw
                inside = mask_m & (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
                src = a_rows + (k // (KH * KW)) * stride_am + ih * stride_ak + iw
                codes = tl.load(src, mask=inside, other=0).to(tl.int32)
                codes = tl.where(inside, codes, pad)
            else:
                codes = tl.load(a_rows + k * stride_ak, mask=mask_m, other=0).to(tl.int32)
            rows = (k * 256 + codes) * N  # int32: the launcher keeps K·256·N < 2^31
            if EVEN_N:
                t = tl.load(t_group + rows[:, None])
            else:
                t = tl.load(t_group + rows[:, None], mask=mask_n[None, :], other=0)
            acc += t.to(tl.int32)
            if LINEAR:
                c = tl.load(c_group + k * N, mask=mask_n, other=0)
                acc += codes[:, None] * c[None, :]
    if LINEAR:
        if split == 0:
            acc += tl.load(bias_ptr + g * N + offs_n, mask=mask_n, other=0)[None, :]
    out = out_ptr + g * so_g + (image * so_b + pos * so_l)[:, None] + offs_n[None, :] * so_n
    if SPLIT_K == 1:
        tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])
    else:  # integer atomics: the sum is exact whatever order the splits arrive in
        tl.atomic_add(out, acc, mask=mask_m[:, None] & mask_n[None, :])


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


# --------------------------------------------------------------------------------------------- tables
@dataclass
class TritonTables:
    """Weight-stationary table of one or more (weights, table) pairs, N concatenated.

    `t` is int32 [G, K, 256, N] (plain entries) or int16 (residuals − 32768; then `c` int32 [G, K, N] holds
    the slopes and `bias` int32 [G, N] Σ_k (off + 32768))."""

    t: torch.Tensor
    c: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.t, self.c, self.bias) if x is not None)


def linear_residual(lut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(R int64 [256, 256], c int64 [256], off int64 [256]) with
    lut[a, b] = R[a, b] + a·c[b] + off[b] and 0 <= R <= RESIDUAL_MAX, or None when a column does not fit.

    c[b] is the least-squares slope of column b over a = 0..255, rounded; off[b] the column's minimum residual."""
    t = lut.to(torch.float64).cpu()
    a = torch.arange(256, dtype=torch.float64)
    ac = a - a.mean()
    c = torch.round((ac[:, None] * (t - t.mean(0))).sum(0) / (ac * ac).sum())
    ci = c.to(torch.int64)
    r = lut.cpu().to(torch.int64) - torch.arange(256)[:, None] * ci[None, :]
    off = r.min(0).values
    r = r - off
    if int(r.max()) > RESIDUAL_MAX:
        return None
    return r, ci, off


def weight_stationary_table(b: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """T[g, k, a, n] = lut[a, b[g, k, n]] as [G, K, 256, N] (lut's dtype)."""
    return lut.t().contiguous()[b.long()].permute(0, 1, 3, 2)


def build_triton_tables(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> TritonTables:
    """pairs of (B [G, K, N] uint8 codes, lut int32 [256,256]) -> TritonTables, N concatenated. Residual
    (int16) entries when every pair's table fits, else plain int32 entries."""
    fits = [linear_residual(lut) for _, lut in pairs]
    if any(f is None for f in fits):
        parts = [weight_stationary_table(b, lut) for b, lut in pairs]
        return TritonTables(_cat(parts, 3))
    ts, cs, biases = [], [], []
    for (b, _), (r, c, off) in zip(pairs, fits):
        dev = b.device
        ts.append(weight_stationary_table(b, (r - 32768).to(torch.int16).to(dev)))
        bl = b.long()
        cs.append(c.to(dev)[bl].to(torch.int32))  # [G, K, N]
        bias = (off + 32768).to(dev)[bl].sum(1)  # [G, N], int64; wrapped to int32 like the kernel's sums
        biases.append(((bias + 2**31) % 2**32 - 2**31).to(torch.int32))
    return TritonTables(_cat(ts, 3), _cat(cs, 2), _cat(biases, 1))


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return (torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0]).contiguous()


# ---------------------------------------------------------------------------------------------- launch
@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    num_warps: int
    unroll: int = 1
    k_major: bool = False  # activations k-major (one coalesced load per k); copied if they are not
    split_k: int = 1  # programs sharing one output tile, each over a slice of K (int32 atomics)

    def unroll_for(self, k: int) -> int:
        """The largest unroll <= self.unroll that divides K (the kernel has no remainder loop)."""
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
        want = 4 * _multiprocessors(device)  # several 2-warp programs per multiprocessor
        if tiles < want and k >= 2 * MIN_K_PER_SPLIT:
            split = min(triton.cdiv(want, tiles), k // MIN_K_PER_SPLIT)
    return Config(block_m, block_n, num_warps=2, split_k=split)


MIN_K_PER_SPLIT = 64


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def triton_lut_matmul(a: torch.Tensor, tables: TritonTables, config: Config | None = None) -> torch.Tensor:
    """a: [G, M, K] uint8 codes, tables: TritonTables [G, K, 256, N] -> int32 [G, M, N]."""
    g, m, k = a.shape
    n = tables.t.shape[3]
    out = torch.empty(g, m, n, dtype=torch.int32, device=a.device)
    cfg = config or default_config(m, n, k, g, a.device)
    if cfg.k_major and a.stride(1) != 1:
        a = a.transpose(1, 2).contiguous().transpose(1, 2)  # same [G, M, K] view, k-major storage
    strides = (a.stride(0), a.stride(1), a.stride(2))
    _launch(a, tables, out, g, m, k, strides, m, (m * n, 0, n, 1), (0,) * 11, (1, 1), cfg)
    return out


def conv_fits(x: torch.Tensor) -> bool:
    """The implicit-im2col kernel can address x (int32 element offsets)."""
    return x.numel() < 2**31 and x.stride(3) == 1


def triton_lut_conv(
    x: torch.Tensor, tables: TritonTables, geometry, config: Config | None = None
) -> torch.Tensor:
    """Convolution with implicit im2col: x [B, C, H, W] uint8 codes (padding = geometry.pad_code), tables
    [G, C/G·kh·kw, 256, N] -> int32 [B, G, N, Ho·Wo] (NCHW order when N is one candidate's C_out/G)."""
    b, c, h, w = x.shape
    g = tables.t.shape[0]
    n = tables.t.shape[3]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        geometry.kernel,
        geometry.stride,
        geometry.padding,
        geometry.dilation,
    )
    ho, wo = geometry.output_size(h, w)
    k, positions = c // g * kh * kw, ho * wo
    out = torch.empty(b, g, n, positions, dtype=torch.int32, device=x.device)
    cfg = config or default_config(b * positions, n, k, g, x.device)
    conv = (c // g, h, w, wo, sh, sw, ph, pw, dh, dw, geometry.pad_code)
    strides = (x.stride(0), x.stride(1), x.stride(2))
    out_strides = (n * positions, g * n * positions, 1, positions)
    _launch(x, tables, out, g, b * positions, k, strides, positions, out_strides, conv, (kh, kw), cfg)
    return out


def _launch(src, tables, out, g, m, k, strides, rows_per_image, out_strides, conv, kernel, cfg: Config):
    t = tables.t
    n = t.shape[3]
    if m == 0 or n == 0 or g == 0:
        return
    if k == 0:
        out.zero_()
        return
    if k * 256 * n >= 2**31:
        raise ValueError(f"triton backend: K·256·N = {k * 256 * n} table entries per group exceed 2^31")
    linear = tables.c is not None
    unroll = cfg.unroll_for(k)
    k_split = triton.cdiv(triton.cdiv(k, cfg.split_k), unroll) * unroll
    split = triton.cdiv(k, k_split)
    if split > 1:
        out.zero_()
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), g * split)
    _kernel_for(src.device)[grid](
        src,
        t,
        tables.c if linear else t,  # not read without LINEAR: any valid pointer
        tables.bias if linear else t,
        out,
        m,
        n,
        k,
        *strides,
        k_split,
        rows_per_image,
        *out_strides,
        *conv,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        LINEAR=linear,
        EVEN_N=n % cfg.block_n == 0,
        UNROLL=unroll,
        SPLIT_K=split,
        CONV=conv[0] != 0,
        KH=kernel[0],
        KW=kernel[1],
        num_warps=cfg.num_warps,
    )
