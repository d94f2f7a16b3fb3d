"""Brute-force reference for the approximate GEMM / conv contract. Slow; the ground truth for tests.

Independent of the fast paths on purpose: its im2col is torch's `F.unfold`, not `dse.kernels.conv`; only
the geometry (argument checks, output size) is shared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dse.kernels.checks import IntPair
from dse.kernels.geometry import ConvGeometry


def lut_index(codes: torch.Tensor) -> torch.Tensor:
    """Table index of 8-bit codes: the operand's byte (value & 0xFF), as int64."""
    return codes.to(torch.int64) & 0xFF


def approx_matmul_reference(a: torch.Tensor, b: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """out[m, n] = Σ_k lut[a[m, k] & 0xFF, b[k, n] & 0xFF], int32 [M, N]."""
    lut = lut.to(device=a.device, dtype=torch.int64).reshape(-1)
    ia, ib = lut_index(a), lut_index(b)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64, device=a.device)
    for k in range(a.shape[1]):
        out += lut[ia[:, k : k + 1] * 256 + ib[k : k + 1, :]]
    return out.to(torch.int32)


def im2col_codes(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """[N, C, H, W] codes -> [N, C*kh*kw, L] codes (int64), padding filled with the geometry's pad_code."""
    ph, pw = geometry.padding
    xi = lut_index(x)
    if ph or pw:
        xi = F.pad(xi, (pw, pw, ph, ph), value=geometry.pad_code)
    cols = F.unfold(xi.to(torch.float64), geometry.kernel, dilation=geometry.dilation, stride=geometry.stride)
    return cols.round().to(torch.int64)


def approx_conv2d_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    lut: torch.Tensor,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    pad_code: int = 0,
) -> torch.Tensor:
    """Conv on 8-bit codes through the table, int32 [N, C_out, H_out, W_out]; a loop over groups is fine here."""
    geometry = ConvGeometry.of(tuple(w.shape), stride, padding, dilation, groups, pad_code)
    n, _, h, wd = x.shape
    c_out, c_per_group, kh, kw = w.shape
    ho, wo = geometry.output_size(h, wd)
    cols = im2col_codes(x, geometry)  # [N, C*kh*kw, L]
    out_per_group = c_out // groups
    k = c_per_group * kh * kw
    outs = []
    for g in range(groups):
        a = cols[:, g * k : (g + 1) * k, :].permute(0, 2, 1).reshape(-1, k)  # [N*L, K]
        b = w[g * out_per_group : (g + 1) * out_per_group].reshape(out_per_group, k).t()  # [K, Cout/g]
        y = approx_matmul_reference(a, b, lut)  # [N*L, Cout/g]
        outs.append(y.reshape(n, ho * wo, out_per_group).permute(0, 2, 1))
    return torch.cat(outs, dim=1).reshape(n, c_out, ho, wo).contiguous()
