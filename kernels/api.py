"""Public entry points: validate the user's operands, prepare the candidates, apply them.

Everything reduces to one *grouped* GEMM (`dse.kernels.plans`): a plain matmul is G = 1, a convolution its
im2col with the groups as G (`dse.kernels.conv`); `dse.kernels.dispatch` picks the backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dse.kernels.checks import (
    IntPair,
    KernelInputError,
    Table,
    check_backend,
    check_codes,
    check_lut,
    check_same_device,
    code_bytes,
)
from dse.kernels.conv import gemm_weights
from dse.kernels.geometry import ConvGeometry
from dse.kernels.plans import Pair
from dse.kernels.prepared import CandidatePlans, PreparedConv2d, PreparedMatmul


# ---------------------------------------------------------------------------------------------- matmul
def _matmul_pairs(b_luts: Sequence[tuple[torch.Tensor, Table]], device: torch.device) -> list[Pair]:
    """Validated (b [K, N] codes, lut) candidates -> (B [1, K, N] uint8, lut int32 on `device`) pairs."""
    pairs = []
    k = None
    for i, (b, lut) in enumerate(b_luts):
        name = "b" if len(b_luts) == 1 else f"candidates[{i}].b"
        check_codes(b, name, 2)
        check_same_device(("a", torch.empty(0, device=device)), (name, b))
        if k is not None and b.shape[0] != k:
            raise KernelInputError(
                f"{name}: expected K = {k} rows like the other candidates, got {b.shape[0]}"
            )
        k = b.shape[0]
        pairs.append((code_bytes(b).unsqueeze(0), check_lut(lut, device)))
    return pairs


def prepare_matmul(b: torch.Tensor, lut: Table, *, backend: str = "auto") -> PreparedMatmul:
    """Prepare weights b [K, N] and a table for repeated `approx_matmul` calls (see PreparedMatmul)."""
    check_backend(backend)
    check_codes(b, "b", 2)
    pairs = _matmul_pairs([(b, lut)], b.device)
    return PreparedMatmul(CandidatePlans(pairs, backend, b.device), b.shape[0])


def prepare_matmul_multi(
    candidates: Sequence[tuple[torch.Tensor, Table]], *, backend: str = "auto"
) -> PreparedMatmul:
    """Prepare several (b_i [K, N_i], lut_i) candidates once; `.apply_all(a)` -> [int32 [M, N_i]]."""
    check_backend(backend)
    if len(candidates) == 0:
        raise KernelInputError("candidates: expected at least one (weights, table) pair")
    check_codes(candidates[0][0], "candidates[0].b", 2)
    device = candidates[0][0].device
    pairs = _matmul_pairs(list(candidates), device)
    return PreparedMatmul(CandidatePlans(pairs, backend, device), pairs[0][0].shape[1])


def approx_matmul(a: torch.Tensor, b: torch.Tensor, lut: Table, *, backend: str = "auto") -> torch.Tensor:
    """out[m, n] = Σ_k lut[a[m,k] & 0xFF, b[k,n] & 0xFF] as int32 [M, N] (wrapping like int32 arithmetic).

    a: [M, K] activation codes, b: [K, N] weight codes, each int8 or uint8; lut: int32 [256, 256].
    """
    check_backend(backend)
    check_codes(a, "a", 2)
    check_codes(b, "b", 2)
    check_same_device(("a", a), ("b", b))
    if a.shape[1] != b.shape[0]:
        raise KernelInputError(f"a, b: inner sizes differ, a is {tuple(a.shape)} and b is {tuple(b.shape)}")
    return prepare_matmul(b, lut, backend=backend)(a)


def approx_matmul_multi(
    a: torch.Tensor, candidates: Sequence[tuple[torch.Tensor, Table]], *, backend: str = "auto"
) -> list[torch.Tensor]:
    """One activation matrix a [M, K] against several (b_i [K, N_i], lut_i) candidates -> [int32 [M, N_i]].

    Bit-exact equal to [approx_matmul(a, b_i, lut_i) for each i]; shared work (activation indices, one
    embedding_bag pass over concatenated weight tables) is done once.
    """
    check_backend(backend)
    check_codes(a, "a", 2)
    if len(candidates) == 0:
        return []
    pairs = _matmul_pairs(list(candidates), a.device)
    if pairs[0][0].shape[1] != a.shape[1]:
        raise KernelInputError(
            f"a: expected K = {pairs[0][0].shape[1]} columns like the weights, got {a.shape[1]}"
        )
    return [y[0] for y in CandidatePlans(pairs, backend, a.device).apply(code_bytes(a).unsqueeze(0))]


# ------------------------------------------------------------------------------------------------ conv
def _prepare_conv(
    candidates: Sequence[tuple[torch.Tensor, Table]],
    x_shape: tuple[int, ...] | None,
    device: torch.device,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
    groups: int,
    pad_code: int,
    backend: str,
) -> PreparedConv2d:
    """Validated conv candidates (same C_in/groups and kernel size) prepared as grouped-GEMM plans."""
    check_backend(backend)
    geometry: ConvGeometry | None = None
    pairs = []
    for i, (w, lut) in enumerate(candidates):
        name = "w" if len(candidates) == 1 else f"candidates[{i}].w"
        check_codes(w, name, 4)
        if w.device != device:
            raise KernelInputError(f"{name}: on {w.device}, but x is on {device}; put both on one device")
        geo = ConvGeometry.of(tuple(w.shape), stride, padding, dilation, groups, pad_code, x_shape)
        if geometry is not None and (geo.kernel, w.shape[1]) != (geometry.kernel, candidates[0][0].shape[1]):
            raise KernelInputError(f"{name}: shape {tuple(w.shape)} differs in C_in/groups or kernel size")
        geometry = geometry or geo
        pairs.append((gemm_weights(w, geometry), check_lut(lut, device)))
    assert geometry is not None  # callers pass at least one candidate
    in_channels = candidates[0][0].shape[1] * groups
    return PreparedConv2d(CandidatePlans(pairs, backend, device, conv=True), geometry, in_channels)


def prepare_conv2d(
    w: torch.Tensor,
    lut: Table,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> PreparedConv2d:
    """Prepare conv weights w [C_out, C_in/groups, kh, kw] and a table for repeated approx_conv2d calls."""
    check_codes(w, "w", 4)
    return _prepare_conv([(w, lut)], None, w.device, stride, padding, dilation, groups, pad_code, backend)


def prepare_conv2d_multi(
    candidates: Sequence[tuple[torch.Tensor, Table]],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> PreparedConv2d:
    """Prepare several (w_i, lut_i) conv candidates once; `.apply_all(x)` -> [int32 [N, C_out_i, Ho, Wo]]."""
    if len(candidates) == 0:
        raise KernelInputError("candidates: expected at least one (weights, table) pair")
    check_codes(candidates[0][0], "candidates[0].w", 4)
    device = candidates[0][0].device
    return _prepare_conv(list(candidates), None, device, stride, padding, dilation, groups, pad_code, backend)


def approx_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    lut: Table,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """2-D convolution on 8-bit codes (NCHW) through the table -> int32 [N, C_out, H_out, W_out].

    Padding positions hold `pad_code` (the code of the operand format's real zero, e.g. the zero point).
    """
    check_codes(x, "x", 4)
    check_codes(w, "w", 4)
    plan = _prepare_conv(
        [(w, lut)], tuple(x.shape), x.device, stride, padding, dilation, groups, pad_code, backend
    )
    return plan(x)


def approx_conv2d_multi(
    x: torch.Tensor,
    candidates: Sequence[tuple[torch.Tensor, Table]],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> list[torch.Tensor]:
    """One input x against several (w_i, lut_i) candidates (same C_in/groups and kernel size; C_out may
    differ) -> [int32 [N, C_out_i, H_out, W_out]], bit-exact equal to separate approx_conv2d calls.
    The im2col and the activation indices are computed once for all candidates."""
    check_codes(x, "x", 4)
    if len(candidates) == 0:
        return []
    plan = _prepare_conv(
        list(candidates), tuple(x.shape), x.device, stride, padding, dilation, groups, pad_code, backend
    )
    return plan.apply_all(x)
