"""Exact integer accumulators computed with float convolutions / GEMMs.

Σ_k xc·wc over centred integer codes is exact in float32 while every partial sum stays below 2^24; a layer
whose worst case (`chunk_bound` · K) exceeds that is summed in chunks of input channels / columns that
each stay below it, and the chunks are added in float64 (exact up to 2^53). A grouped conv that cannot be
chunked that way runs in float64.

On CUDA the exactly-quantized convolution does not go through cuDNN (Winograd / FFT algorithms are not exact
on integers) nor through PyTorch's cuDNN-less fallback (`thnn_conv2d`, one GEMM per image: 455-536 ms for a
ResNet-20 batch of 1024 on an H100): `exact_conv_unfold` is one batched unfold (im2col) per slab of images
plus float32 GEMMs over chunks of the reduction whose partial sums stay below 2^24, TF32 off, the chunks
added in float64. It is device-independent, so its bit-exactness is tested on CPU against `exact_conv_acc`.
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


# images per unfold slab: the unfolded slab [n, K, L] float32 stays below this many bytes
UNFOLD_SLAB_BYTES = 256 * 2**20


def exact_conv_unfold(
    xc: torch.Tensor,
    wc: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    bound: int,
) -> torch.Tensor:
    """conv2d(xc, wc) (groups 1, no bias) of integer-valued float codes, exactly: per slab of images one
    unfold [n, K, L] and float32 GEMMs over chunks of K whose partial sums stay below 2^24 (`bound` the
    worst-case product, `chunk_bound`), TF32 off, chunks added in float64. -> [N, C_out, H_out, W_out],
    float32 when K fits one chunk, else float64 (as `exact_conv_acc`)."""
    n, _, h, w = xc.shape
    c_out, _, kh, kw = wc.shape
    k = wc.shape[1:].numel()
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    per_chunk = max(1, F32_EXACT // (bound + 1))
    w2 = wc.reshape(c_out, k).to(torch.float32)
    slab = max(1, UNFOLD_SLAB_BYTES // max(1, k * h_out * w_out * 4))
    dtype = torch.float32 if k <= per_chunk else torch.float64
    out = torch.empty(n, c_out, h_out * w_out, dtype=dtype, device=xc.device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for i in range(0, n, slab):
            cols = F.unfold(
                xc[i : i + slab].to(torch.float32), (kh, kw), dilation, padding, stride
            )  # [n,K,L]
            parts = [
                torch.matmul(w2[:, j : j + per_chunk], cols[:, j : j + per_chunk])
                for j in range(0, k, per_chunk)
            ]
            out[i : i + slab] = exact_sum([p.round() for p in parts])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out.view(n, c_out, h_out, w_out)
