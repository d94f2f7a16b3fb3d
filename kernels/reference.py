"""Brute-force reference for the approximate GEMM / conv contract. Slow; the ground truth for tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


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


def im2col_codes(x: torch.Tensor, kernel_size, stride, padding, dilation, pad_code: int) -> torch.Tensor:
    """[N, C, H, W] codes -> [N, C*kh*kw, L] codes, padding filled with `pad_code` (the code of real zero)."""
    kh, kw = _pair(kernel_size)
    ph, pw = _pair(padding)
    xi = lut_index(x)
    if ph or pw:
        xi = F.pad(xi, (pw, pw, ph, ph), value=int(pad_code) & 0xFF)
    cols = F.unfold(xi.to(torch.float64), (kh, kw), dilation=_pair(dilation), stride=_pair(stride))
    return cols.round().to(torch.int64)


def conv_output_size(h: int, w: int, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def approx_conv2d_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    lut: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    pad_code: int = 0,
) -> torch.Tensor:
    """Conv on 8-bit codes through the table, int32 [N, C_out, H_out, W_out]; a loop over groups is fine here."""
    n, c_in, h, wd = x.shape
    c_out, c_per_group, kh, kw = w.shape
    ho, wo = conv_output_size(h, wd, (kh, kw), stride, padding, dilation)
    cols = im2col_codes(x, (kh, kw), stride, padding, dilation, pad_code)  # [N, C*kh*kw, L]
    out_per_group = c_out // groups
    k = c_per_group * kh * kw
    outs = []
    for g in range(groups):
        a = cols[:, g * k : (g + 1) * k, :].permute(0, 2, 1).reshape(-1, k)  # [N*L, K]
        b = w[g * out_per_group : (g + 1) * out_per_group].reshape(out_per_group, k).t()  # [K, Cout/g]
        y = approx_matmul_reference(a, b, lut)  # [N*L, Cout/g]
        outs.append(y.reshape(n, ho * wo, out_per_group).permute(0, 2, 1))
    return torch.cat(outs, dim=1).reshape(n, c_out, ho, wo).contiguous()
