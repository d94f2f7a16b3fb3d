"""Exact integer accumulators computed with float convolutions / GEMMs.

Σ_k xc·wc over centred integer codes is exact in float32 while every partial sum stays below 2^24; a layer
whose worst case (`chunk_bound` · K) exceeds that is summed in chunks of input channels / columns that
each stay below it, and the chunks are added in float64 (exact up to 2^53). A grouped conv that cannot be
chunked that way runs in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dse.quant import QuantFormat

F32_EXACT = 2**24  # integer sums below this are exact in float32


def chunk_bound(fmt: QuantFormat) -> int:
    """Worst-case |xc·wc| of one product of centred codes in this format."""
    amax = 128 if fmt.signed else 255
    wmax = 255 if fmt.weight_scheme == "affine" else 127
    return amax * wmax


def exact_sum(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the chunks' partial sums: the only chunk itself, else in float64."""
    if len(parts) == 1:
        return parts[0]
    out = parts[0].to(torch.float64)
    for p in parts[1:]:
        out = out + p.to(torch.float64)
    return out


def round_ste(t: torch.Tensor) -> torch.Tensor:
    """round(t) for no-grad values; training values pass unchanged."""
    # the float GEMM/conv of integer codes is exact below 2^24; rounding also removes any algorithmic error
    # (cuDNN). Training values need no rounding: their exactness is not measured, the gradient is the same.
    return t if t.requires_grad else t.round()


def exact_linear_acc(xc: torch.Tensor, wc: torch.Tensor, bound: int) -> torch.Tensor:
    """Σ_k xc[..., k]·wc[n, k] exactly, for a product bound `bound` (`chunk_bound`)."""
    k = wc.shape[1:].numel()
    per_chunk = F32_EXACT // (bound + 1)
    if k <= per_chunk:
        return round_ste(F.linear(xc, wc))
    parts = [
        round_ste(F.linear(xc[..., i : i + per_chunk], wc[:, i : i + per_chunk]))
        for i in range(0, k, per_chunk)
    ]
    return exact_sum(parts)


def exact_conv_acc(
    conv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    xc: torch.Tensor,
    wc: torch.Tensor,
    kernel_size: tuple[int, ...],
    groups: int,
    bound: int,
) -> torch.Tensor:
    """conv(xc, wc) exactly (`conv` the layer's convolution without bias, any dtype), for a product bound
    `bound` (`chunk_bound`): whole, by chunks of input channels (groups == 1), or in float64."""
    if wc.shape[1:].numel() * bound < F32_EXACT:
        return round_ste(conv(xc, wc))
    kk = kernel_size[0] * kernel_size[1]
    per_chunk = F32_EXACT // (kk * bound + 1)
    c_in = wc.shape[1]
    if groups == 1 and per_chunk >= 1:
        parts = [
            round_ste(conv(xc[:, i : i + per_chunk], wc[:, i : i + per_chunk]))
            for i in range(0, c_in, per_chunk)
        ]
        return exact_sum(parts)
    return round_ste(conv(xc.to(torch.float64), wc.to(torch.float64)))
