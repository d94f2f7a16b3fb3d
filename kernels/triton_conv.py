"""The `triton` backend's convolution with implicit im2col (CUDA).

The GEMM of `triton_gemm` without materialising im2col: output row m = (image, position) and k step
k = (channel, tap row, tap column) — the order of the weights' [C/G, kh, kw] — so the kernel gathers the
codes of row m, step k from x [B, C, H, W] itself (the padding code outside the input) and stores the output
in NCHW order. Same tables, tiles and sums as the GEMM (`triton_tables`, `triton_common`). On CPU tensors it
runs under Triton's interpreter (TRITON_INTERPRET=1): tests only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from dse.kernels.geometry import ConvGeometry
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
def lut_conv_kernel(
    # Pointers
    x_ptr: tl.tensor,  # uint8 input codes x [B, C, H, W], W contiguous
    t_ptr: tl.tensor,  # int16 residuals or int32 entries T [G, K, 256, N], K = C/G·KH·KW
    c_ptr: tl.tensor,  # int32 slopes c(b) [G, K, N] (LINEAR only)
    bias_ptr: tl.tensor,  # int32 Σ_k (off(b) + 32768) [G, N] (LINEAR only)
    out_ptr: tl.tensor,  # int32 [B, G, N, L], L = H_out·W_out
    # Sizes
    M: tl.tensor,  # output rows B·L
    N: tl.tensor,
    K: tl.tensor,
    K_SPLIT: tl.tensor,  # k steps per split (a multiple of UNROLL); SPLIT_K programs share each tile
    L: tl.tensor,  # output positions per image
    C_G: tl.tensor,  # input channels per group
    H: tl.tensor,
    W: tl.tensor,
    W_OUT: tl.tensor,
    # Strides
    stride_xb: tl.tensor,
    stride_xc: tl.tensor,
    stride_xh: tl.tensor,
    stride_ob: tl.tensor,
    stride_og: tl.tensor,
    stride_on: tl.tensor,
    stride_ol: tl.tensor,
    # Geometry: stride, padding, dilation (height, width), padding code
    SH: tl.tensor,
    SW: tl.tensor,
    PH: tl.tensor,
    PW: tl.tensor,
    DH: tl.tensor,
    DW: tl.tensor,
    PAD: tl.tensor,
    # Meta-parameters
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LINEAR: tl.constexpr,  # residual table: add a·c per lookup and the bias per output
    EVEN_N: tl.constexpr,  # N % BLOCK_N == 0: table loads need no mask (masked-off rows read code 0's row)
    UNROLL: tl.constexpr,  # k steps per loop iteration (independent gathers in flight)
    SPLIT_K: tl.constexpr,  # > 1: partial sums added with int32 atomics into a zeroed output
    KH: tl.constexpr,
    KW: tl.constexpr,
) -> None:
    g, split, k_lo, k_hi, offs_m, offs_n = program_tile(M, N, K, K_SPLIT, BLOCK_M, BLOCK_N, SPLIT_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    image = offs_m // L
    pos = offs_m % L
    ih0 = (pos // W_OUT) * SH - PH
    iw0 = (pos % W_OUT) * SW - PW
    x_rows = x_ptr + image * stride_xb + g * C_G * stride_xc
    t_group = t_ptr + g * K * 256 * N + offs_n[None, :]
    c_group = c_ptr + g * K * N + offs_n
    acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.int32)
    for k0 in range(k_lo, k_hi, UNROLL):  # the launcher picks UNROLL dividing K and K_SPLIT
        for u in tl.static_range(UNROLL):
            k = k0 + u
            ih = ih0 + ((k % (KH * KW)) // KW) * DH
            iw = iw0 + (k % KW) * DW
            inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            src = x_rows + (k // (KH * KW)) * stride_xc + ih * stride_xh + iw
            codes = tl.load(src, mask=inside, other=0).to(tl.int32)
            codes = tl.where(inside, codes, PAD)
            acc = lookup(acc, t_group, c_group, codes, k, N, mask_n, LINEAR, EVEN_N)
    out = (
        out_ptr + g * stride_og + (image * stride_ob + pos * stride_ol)[:, None] + offs_n[None, :] * stride_on
    )
    store_tile(out, acc, bias_ptr + g * N + offs_n, split, mask_m, mask_n, LINEAR, SPLIT_K)


def conv_fits(x: torch.Tensor) -> bool:
    """The implicit-im2col kernel can address x (int32 element offsets, W contiguous)."""
    return x.numel() < 2**31 and x.stride(3) == 1


def triton_lut_conv(
    x: torch.Tensor, tables: TritonTables, geometry: ConvGeometry, config: Config | None = None
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
    launch = plan_launch(tables, out, g, b * positions, k, cfg)
    if launch is None:
        return out
    runnable(lut_conv_kernel, x.device)[launch.grid](
        x,
        *tables.pointers(),
        out,
        b * positions,
        n,
        k,
        launch.k_split,
        positions,
        c // g,
        h,
        w,
        wo,
        *x.stride()[:3],
        *out.stride(),
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        geometry.pad_code,
        KH=kh,
        KW=kw,
        **launch.meta,
    )
    return out
