"""The `cpu` backend: weight-stationary embedding_bag, plus a direct gather for tiny problems.

For weights B [G, K, N] (G groups, codes 0..255) and a table L, the *weight-stationary table* is

    T[a, k, g, n] = L[a, B[g, k, n]]          (float; rows (a, k, g), columns n; built by one gather)

so out[g, m, :] = Σ_k T[A[g, m, k], k, g, :] is one `F.embedding_bag(mode="sum")` over rows of T: one
contiguous row read of N values per (m, k) instead of N scattered table reads. Float sums of integers are
exact while every partial sum stays below 2^24 (float32) or 2^53 (float64), so K is cut into chunks of
`chunk` steps with chunk·max|T| below that bound, and the chunks are added in int64. Within a chunk, K is
walked in blocks whose slab of T (~1 MB) stays in L2 while all M rows read it: 2.9x faster than one
embedding_bag over the whole 37 MB table at K=576, N=64 (measured, one core).

Building T costs K·256·N·G table reads; a `WeightTables` holds it so that the same (weights, table) pair is
applied to many activation batches without rebuilding it (see `dse.kernels.PreparedMatmul`).
Several (weights, table) pairs with the same G and K concatenate their T along n: one pass over the
activations serves a whole population of candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FLOAT32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
FLOAT64_EXACT = 2**53
KEEP_TABLE_BYTES = 256 << 20  # larger weight-stationary tables are streamed slab by slab, not kept
MIN_ROWS_PER_THREAD = 256  # fewer activation rows per thread: one thread does it all
SLAB_BYTES = 1 << 20  # K steps per embedding_bag call: the slab they read stays in L2 (3x faster, measured)
GATHER_CHUNK_ELEMENTS = 1 << 22  # direct-gather path: index tensor elements per step (bounded memory)
INDEX_BLOCK_ELEMENTS = 1 << 21  # embedding_bag path: int32 indices built per block of rows (8 MB)


@dataclass(frozen=True)
class WeightTables:
    """Weight-stationary tables of one or several (weights, table) pairs sharing G and K.

    `slabs[i]` is the float table for K steps [i·block, (i+1)·block), shape [256·steps·G, n_total], small
    enough to stay in the L2 cache while every activation row reads it; `chunk` (a multiple of `block`) is
    the number of K steps whose float sum is exact; `widths` the N of each pair, in concatenation order.
    When the whole table would exceed KEEP_TABLE_BYTES, `slabs` is empty and each slab is built while
    applying (`pairs` kept instead): memory stays bounded for huge layers.
    """

    slabs: tuple[torch.Tensor, ...]
    block: int
    chunk: int
    groups: int
    k: int
    widths: tuple[int, ...]
    dtype: torch.dtype
    pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()  # (B, float table) when streamed

    @property
    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.slabs)

    def slab(self, i: int) -> torch.Tensor:
        return self.slabs[i] if self.slabs else _slab(self.pairs, self.dtype, i * self.block, self.block)

    @property
    def count(self) -> int:
        return max(1, -(-self.k // self.block))


def _slab(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype, k0: int, block: int
) -> torch.Tensor:
    """Rows (a, k, g) for K steps [k0, k0 + block) of pairs (B, float table of `dtype`)."""
    parts = []
    for b, lut in pairs:
        cols = b[:, k0 : k0 + block].permute(1, 0, 2).reshape(-1).long()  # (k, g, n) order
        # one gather straight into the final layout: row (a, k, g), columns n
        parts.append(lut.index_select(1, cols).view(-1, b.shape[2]))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def exact_chunk(max_abs: int, k: int) -> tuple[torch.dtype, int]:
    """(float dtype, K steps per chunk) such that sums of `chunk` values of magnitude <= max_abs are exact."""
    if max_abs == 0:
        return torch.float32, max(k, 1)
    if max_abs <= FLOAT32_EXACT:
        return torch.float32, max(1, min(k, FLOAT32_EXACT // max_abs))
    return torch.float64, max(1, min(k, FLOAT64_EXACT // max_abs))


def build_weight_tables(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> WeightTables:
    """pairs of (B [G, K, N] int codes 0..255, lut int32 [256,256]) -> their concatenated weight tables."""
    g, k = pairs[0][0].shape[0], pairs[0][0].shape[1]
    n_total = sum(b.shape[2] for b, _ in pairs)
    max_abs = 0
    for b, lut in pairs:
        used = torch.unique(b.reshape(-1).long())  # only the table columns these weights select matter
        max_abs = max(max_abs, int(lut.index_select(1, used).abs().max()) if used.numel() else 0)
    dtype, chunk = exact_chunk(max_abs, k)
    row_bytes = 256 * g * max(1, n_total) * torch.empty(0, dtype=dtype).element_size()
    block = max(1, min(chunk, SLAB_BYTES // row_bytes))
    chunk = chunk // block * block
    widths = tuple(b.shape[2] for b, _ in pairs)
    pairs = [(b, lut.to(dtype)) for b, lut in pairs]
    if k * row_bytes > KEEP_TABLE_BYTES:
        return WeightTables((), block, chunk, g, k, widths, dtype, tuple(pairs))
    slabs = tuple(_slab(pairs, dtype, k0, block) for k0 in range(0, max(k, 1), block))
    return WeightTables(slabs, block, chunk, g, k, widths, dtype)


def apply_weight_tables(a: torch.Tensor, tables: WeightTables) -> torch.Tensor:
    """a: [G, M, K] activation codes 0..255 (any int dtype) -> int32 [G, M, n_total].

    On CPU with several torch threads, the rows are split among that many Python worker threads, each
    running the whole K loop single-threaded: one embedding_bag per slab is a small parallel region, and
    on a machine shared with other processes the barriers of dozens of them made 2 threads 10x slower than
    1 (measured: 0.5 vs 5 G LUT-MAC/s); independent row halves do not wait for each other.
    """
    threads = torch.get_num_threads()
    if a.device.type == "cpu" and threads > 1 and a.shape[1] >= threads * MIN_ROWS_PER_THREAD:
        parts = torch.tensor_split(a, threads, dim=1)
        torch.set_num_threads(1)  # global: each worker's ops run single-threaded; restored below
        try:
            outs = list(_pool(threads).map(lambda part: _apply_weight_tables(part, tables), parts))
        finally:
            torch.set_num_threads(threads)
        return torch.cat(outs, dim=1)
    return _apply_weight_tables(a, tables)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One small pool of worker threads per thread count (torch ops release the GIL)."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="dse-kernels")
    return _POOLS[threads]


def _apply_weight_tables(a: torch.Tensor, tables: WeightTables) -> torch.Tensor:
    """Rows in blocks whose int32 index arrays stay ~8 MB: one array for a whole LeNet conv1 batch
    (1.6 M rows x 25) was 157 MB of fresh pages per call; in blocks it runs 2.2x faster (249 -> 111 ms, one
    core; LeNet conv2 162 -> 97 ms; 2^19 and 2^22 elements per block were slower)."""
    g, m, k = a.shape
    rows = max(256, INDEX_BLOCK_ELEMENTS // max(1, g * k))
    if m <= rows or not tables.slabs:  # streamed tables are rebuilt per call: one pass over all rows
        return _apply_rows(a, tables)
    return torch.cat([_apply_rows(a[:, r : r + rows], tables) for r in range(0, m, rows)], dim=1)


def _apply_rows(a: torch.Tensor, tables: WeightTables) -> torch.Tensor:
    g, m, k = a.shape
    n_total = sum(tables.widths)
    if k == 0 or m == 0:
        return torch.zeros(g, m, n_total, dtype=torch.int32, device=a.device)
    block = tables.block
    full = k // block
    # every block's indices in one pass, laid out [block i, G, M, steps] so each is contiguous;
    # row of (a, k, g) in a slab: a·steps·G + (k - k0)·G + g  (permute the bytes, then in place)
    group_rows = torch.arange(g, device=a.device, dtype=torch.int32)[None, :, None, None]
    steps_off = torch.arange(block, device=a.device, dtype=torch.int32) * g
    a_blocks = a[:, :, : full * block].reshape(g, m, full, block).permute(2, 0, 1, 3).contiguous()
    # same-dtype in-place ops: a mixed uint8/int32 broadcast add is 4x slower (measured)
    main = a_blocks.to(torch.int32).mul_(block * g).add_(steps_off + group_rows)
    out = None  # int64 sum of exact float chunks
    acc = None  # float sum within the current chunk
    for i in range(tables.count):
        slab = tables.slab(i)
        k0 = i * block
        steps = min(block, k - k0)
        if i < full:
            idx = main[i].view(g * m, steps)
        else:
            offs = steps_off[:steps] + group_rows[0]  # [G, 1, steps]
            idx = a[:, :, k0:].to(torch.int32).mul_(steps * g).add_(offs).reshape(g * m, steps)
        part = F.embedding_bag(idx, slab, mode="sum")
        acc = part if acc is None else acc.add_(part)
        if (k0 + steps) % tables.chunk == 0 or k0 + steps == k:
            if out is None and k0 + steps == k and acc.dtype == torch.float32:
                return acc.to(torch.int32).reshape(g, m, n_total)  # one exact chunk: |sum| <= 2^24
            out = acc.to(torch.int64) if out is None else out.add_(acc.to(torch.int64))
            acc = None
    assert out is not None  # k > 0: the last slab closed a chunk
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
