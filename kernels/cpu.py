"""The `cpu` backend: weight-stationary embedding_bag (DESIGN.md §6), plus a direct gather for tiny problems.

For weights B [G, K, N] (G groups, codes 0..255) and a table L, the *weight-stationary table* is

    T[a, k, g, n] = L[a, B[g, k, n]]          (float; rows (a, k, g), columns n; built by one gather)

so out[g, m, :] = Σ_k T[A[g, m, k], k, g, :] is one `F.embedding_bag(mode="sum")` over rows of T: one
contiguous row read of N values per (m, k) instead of N scattered table reads. Float sums of integers are
exact while every partial sum stays below 2^24 (float32) or 2^53 (float64), so K is cut into chunks of
`chunk` steps with chunk·max|T| below that bound, and the chunks are added in int64.

Building T costs K·256·N·G table reads; a `WeightTables` holds it so that the same (weights, table) pair is
applied to many activation batches without rebuilding it (see `dse.kernels.PreparedMatmul`).
Several (weights, table) pairs with the same G and K concatenate their T along n: one pass over the
activations serves a whole population of candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FLOAT32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
FLOAT64_EXACT = 2**53
GATHER_CHUNK_ELEMENTS = 1 << 22  # direct-gather path: index tensor elements per step (bounded memory)


@dataclass(frozen=True)
class WeightTables:
    """Weight-stationary tables of one or several (weights, table) pairs sharing G and K.

    `chunks[i]` is the float table for K steps [i·chunk, (i+1)·chunk), shape [256·steps·G, n_total];
    `widths` the N of each pair in the order they were concatenated.
    """

    chunks: tuple[torch.Tensor, ...]
    chunk: int
    groups: int
    k: int
    widths: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.chunks)


def exact_chunk(max_abs: int, k: int) -> tuple[torch.dtype, int]:
    """(float dtype, K steps per chunk) such that sums of `chunk` values of magnitude <= max_abs are exact."""
    if max_abs == 0:
        return torch.float32, max(k, 1)
    if max_abs <= FLOAT32_EXACT:
        return torch.float32, max(1, min(k, FLOAT32_EXACT // max_abs))
    return torch.float64, max(1, min(k, FLOAT64_EXACT // max_abs))


def build_weight_tables(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> WeightTables:
    """pairs of (B [G, K, N] int codes 0..255, lut int32 [256,256]) -> their concatenated weight tables."""
    g, k = pairs[0][0].shape[0], pairs[0][0].shape[1]
    max_abs = 0
    for b, lut in pairs:
        used = torch.unique(b.reshape(-1).long())  # only the table columns these weights select matter
        max_abs = max(max_abs, int(lut.index_select(1, used).abs().max()) if used.numel() else 0)
    dtype, chunk = exact_chunk(max_abs, k)
    luts = [lut.to(dtype) for _, lut in pairs]
    chunks = []
    for k0 in range(0, max(k, 1), chunk):
        parts = []
        for (b, _), lut_f in zip(pairs, luts):
            cols = b[:, k0 : k0 + chunk].permute(1, 0, 2).reshape(-1).long()  # (k, g, n) order
            # one gather straight into the final layout: row (a, k, g), columns n
            parts.append(lut_f.index_select(1, cols).view(-1, b.shape[2]))
        chunks.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    return WeightTables(tuple(chunks), chunk, g, k, tuple(b.shape[2] for b, _ in pairs))


def apply_weight_tables(a: torch.Tensor, tables: WeightTables) -> torch.Tensor:
    """a: [G, M, K] activation codes 0..255 (any int dtype) -> int32 [G, M, n_total]."""
    g, m, k = a.shape
    n_total = sum(tables.widths)
    if k == 0 or m == 0:
        return torch.zeros(g, m, n_total, dtype=torch.int32, device=a.device)
    out = None
    for i, table in enumerate(tables.chunks):
        k0 = i * tables.chunk
        steps = min(tables.chunk, k - k0)
        # row of (a, k, g) in the chunk's table: a·steps·G + (k - k0)·G + g
        base = (torch.arange(steps, device=a.device, dtype=torch.int32) * g)[None, None, :] + torch.arange(
            g, device=a.device, dtype=torch.int32
        )[:, None, None]
        idx = (a[:, :, k0 : k0 + steps].to(torch.int32) * (steps * g) + base).reshape(g * m, steps)
        part = F.embedding_bag(idx, table, mode="sum")
        if len(tables.chunks) == 1 and table.dtype == torch.float32:
            return part.to(torch.int32).reshape(g, m, n_total)
        part = part.to(torch.int64)
        out = part if out is None else out.add_(part)
    return out.to(torch.int32).reshape(g, m, n_total)


def gather_matmul(a: torch.Tensor, b: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Direct table reads, Σ_k lut[a, b] with int64 sums: a [G, M, K], b [G, K, N] codes -> int32 [G, M, N].

    Cheaper than building weight tables when M is tiny or N is 1 (depthwise convolutions).
    """
    g, m, k = a.shape
    n = b.shape[2]
    flat = lut.reshape(-1)
    out = torch.zeros(g, m, n, dtype=torch.int64, device=a.device)
    if k == 0 or m == 0 or n == 0:
        return out.to(torch.int32)
    ai = a.to(torch.int64) * 256
    bi = b.to(torch.int64)
    step = max(1, GATHER_CHUNK_ELEMENTS // max(1, g * m * n))
    for k0 in range(0, k, step):
        idx = ai[:, :, k0 : k0 + step, None] + bi[:, None, k0 : k0 + step, :]  # [G, M, steps, N]
        out += flat[idx].sum(dim=2, dtype=torch.int64)
    return out.to(torch.int32)
