"""The `lowrank` backend: an exact integer factorisation of a low-rank table into a few dense GEMMs.

A table of exact rank r is written as  denom · L = U @ V  with integer U [256, r], V [r, 256] and a positive
integer `denom` (1 for DRUM-k, exact and most truncated tables). Then

    denom · out[m, n] = Σ_k Σ_j U[a[m,k], j] · V[j, b[k,n]]  =  (U[A] as [M, K·r]) @ (V[:, B] as [K·r, N])

which is one float GEMM. It is exact because every term and every partial sum is an integer of magnitude
below 2^24 (float32) or 2^53 (float64): K is cut into chunks small enough for that, each chunk's result is
rounded to int64 (it already is an integer) and the chunks are added in int64, then divided by `denom`.

Factorisation (once per table, a few ms, kept in a small bounded cache keyed by the table's bytes):
floating-point SVD gives the candidate rank r; r independent rows P are picked smallest-magnitude first and
column-pivoted QR of those rows picks r columns Q; with
M = L[P, Q], D = det M and adj(M) = D·M⁻¹ computed in Python integers, U = L[:, Q]·adj(M), V = L[P, :],
and D·L == U·V is *verified in exact integer arithmetic* (a table whose true rank is higher fails the check
and is reported as not low-rank). Row contents of V and the common factor of U and D are divided out to keep
the magnitudes (and so the float dtype and chunk size) small.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
from dse.kernels.cpu import FLOAT32_EXACT, FLOAT64_EXACT
from dse.kernels.geometry import ConvGeometry

MAX_RANK = 16  # tables of higher rank are never worth it (>= 16 GEMMs)
MIN_FLOAT32_CHUNK = 64  # below this many K steps per exact float32 chunk, float64 GEMMs are faster
# codes of A gathered per GEMM block (2 MB of float32 U[A]): 1 thread, M=131072 K=144: 35 ms; 2^22: 110 ms
APPLY_BLOCK_ELEMENTS = 1 << 19
_PROBE_ROWS = np.random.default_rng(0).permutation(256)[: MAX_RANK + 8]
_PROBE_COLS = np.random.default_rng(1).permutation(256)[: MAX_RANK + 8]


@dataclass(frozen=True)
class LowRankFactors:
    """denom · lut == u @ v exactly; u int64 [256, r] (activation side), v int64 [r, 256] (weight side)."""

    u: np.ndarray
    v: np.ndarray
    denom: int

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])

    def step_bound(self) -> int:
        """Bound on |Σ_j u[a, j]·v[j, b]| term magnitudes summed over j: one K step of the GEMM."""
        return int(
            sum(int(np.abs(self.u[:, j]).max()) * int(np.abs(self.v[j]).max()) for j in range(self.rank))
        )

    def float_plan(self, k: int) -> tuple[torch.dtype, int]:
        """(dtype, K steps per chunk) for an exact GEMM over K steps."""
        step = max(1, self.step_bound())
        if step <= FLOAT32_EXACT:
            chunk32 = FLOAT32_EXACT // step
            if chunk32 >= min(k, MIN_FLOAT32_CHUNK):
                return torch.float32, max(1, min(k, chunk32))
        return torch.float64, max(1, min(k, FLOAT64_EXACT // step))

    def cost(self, k: int) -> float:
        """Relative cost vs one float32 GEMM of the same shape (rank · dtype factor), for the dispatcher."""
        dtype, _ = self.float_plan(k)
        return self.rank * (2.0 if dtype == torch.float64 else 1.0)


def _det_adj(m: list[list[int]]) -> tuple[int, list[list[int]]]:
    """Exact determinant and adjugate (det · inverse) of a small nonsingular integer matrix."""
    n = len(m)
    aug = [[Fraction(x) for x in row] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(m)]
    det = Fraction(1)
    for c in range(n):
        p = next((r for r in range(c, n) if aug[r][c] != 0), None)
        if p is None:
            return 0, []
        if p != c:
            aug[c], aug[p] = aug[p], aug[c]
            det = -det
        det *= aug[c][c]
        piv = aug[c][c]
        aug[c] = [x / piv for x in aug[c]]
        for r in range(n):
            if r != c and aug[r][c] != 0:
                f = aug[r][c]
                aug[r] = [x - f * y for x, y in zip(aug[r], aug[c])]
    d = int(det)
    return d, [[int(x * d) for x in row[n:]] for row in aug]


def _small_independent_rows(lf: np.ndarray, r: int) -> list[int] | None:
    """r linearly independent rows, smallest magnitude first: small basis rows give small factors (for a
    column-truncated multiplier they are the rows a = 2^i, whose coefficients are a's bits)."""
    order = np.argsort(np.abs(lf).max(axis=1), kind="stable")
    basis: list[np.ndarray] = []
    rows: list[int] = []
    for i in order:
        v = lf[i].copy()
        norm = np.linalg.norm(v)
        if norm == 0:
            continue
        for q in basis:
            v -= (q @ v) * q
        if np.linalg.norm(v) > norm * 1e-9:
            basis.append(v / np.linalg.norm(v))
            rows.append(int(i))
            if len(rows) == r:
                return sorted(rows)
    return None


def _factorize(lut: np.ndarray) -> LowRankFactors | None:
    import scipy.linalg

    lf = lut.astype(np.float64)
    if not lf.any():
        return LowRankFactors(np.zeros((256, 1), np.int64), np.zeros((1, 256), np.int64), 1)
    probe = lf[_PROBE_ROWS][:, _PROBE_COLS]  # cheap rejection of the common full-rank tables
    if np.linalg.matrix_rank(probe) > MAX_RANK:
        return None
    s = np.linalg.svd(lf, compute_uv=False)
    r = int((s > s[0] * 256 * np.finfo(np.float64).eps).sum())
    if r > MAX_RANK:
        return None
    rows = _small_independent_rows(lf, r)
    if rows is None:
        return None
    _, _, col_piv = scipy.linalg.qr(lf[rows], pivoting=True, mode="economic")
    cols = sorted(col_piv[:r].tolist())
    obj = lut.astype(object)
    d, adj = _det_adj([[int(obj[i, j]) for j in cols] for i in rows])
    if d == 0:
        return None
    u = obj[:, cols].dot(np.array(adj, dtype=object))  # [256, r]
    v = obj[rows, :].copy()  # [r, 256]
    if not (u.dot(v) == obj * d).all():
        return None  # the float rank was too low: not exactly rank r
    for j in range(r):
        c = math.gcd(*[int(x) for x in v[j]])
        if c > 1:
            v[j] = v[j] // c
            u[:, j] = u[:, j] * c
    g = math.gcd(d, *[int(x) for x in u.reshape(-1)])
    if d < 0:
        g = -g
    u, d = u // g, d // g
    if max(int(np.abs(u).max()), int(np.abs(v).max()), d) >= 2**62:
        return None
    return LowRankFactors(u.astype(np.int64), v.astype(np.int64), int(d))


@lru_cache(maxsize=256)
def _factorize_cached(key: bytes) -> LowRankFactors | None:
    return _factorize(np.frombuffer(key, dtype=np.int32).reshape(256, 256))


def lowrank_factors(lut: torch.Tensor) -> LowRankFactors | None:
    """Exact integer factors of an int32 [256,256] table, or None when its rank exceeds MAX_RANK.

    Cached by the table's bytes (at most 256 tables, each a few KB of factors).
    """
    return _factorize_cached(lut.detach().to("cpu", torch.int32).contiguous().numpy().tobytes())


@dataclass(frozen=True)
class LowRankWeights:
    """V[j, B] for weights B [G, K, N]: the right-hand GEMM operands [r, G, K, N], plus the float plan."""

    factors: LowRankFactors
    u_t: torch.Tensor  # [r, 256] float: U transposed, one lookup vector per rank-one term
    vb: torch.Tensor  # [r, G, K, N] float
    dtype: torch.dtype
    chunk: int

    @property
    def nbytes(self) -> int:
        return self.vb.numel() * self.vb.element_size()

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor | None:
        """A convolution straight from x [B, C, H, W] uint8 codes, without im2col: per chunk of input
        channels whose float32 sums stay exact, ONE float32 convolution (oneDNN) of U_j[x] stacked along
        channels for the r terms against V_j[w] -> int32 [B, 1, N, Ho·Wo]. DRUM-k (rank 1), ResNet-20
        16->16 3x3 on 250 28x28 images, one thread: ~0.02 s against 0.17 s for im2col + GEMMs.
        None (the caller uses im2col + `apply`) off CPU, for grouped convolutions, float64 plans, or a
        chunk shorter than one channel's taps."""
        kh, kw = geometry.kernel
        k, n = self.vb.shape[2], self.vb.shape[3]
        cc = self.chunk // (kh * kw)
        if x.device.type != "cpu" or geometry.groups != 1 or self.dtype != torch.float32 or cc < 1:
            return None
        if k % (kh * kw) or x.shape[1] * kh * kw != k:
            return None
        c, r = k // (kh * kw), self.factors.rank
        ho, wo = geometry.checked_output_size(x.shape[2], x.shape[3])
        w = self.vb[:, 0].permute(0, 2, 1).reshape(r, n, c, kh, kw)  # [r, N, C, kh, kw]
        padding = list(geometry.padding)
        if any(padding) and (geometry.pad_code != 0 or bool(self.u_t[:, 0].any())):
            ph, pw = geometry.padding  # padding must read U[pad_code], not 0: pad the codes first
            x = torch.nn.functional.pad(x, (pw, pw, ph, ph), value=geometry.pad_code)
            padding = [0, 0]
        xi = x.to(torch.int64)
        u = torch.stack([self.u_t[j][xi] for j in range(r)], dim=1)  # [B, r, C, H, W]
        out: torch.Tensor | None = None
        with exact_float_conv():
            for c0 in range(0, c, cc):
                c1 = min(c, c0 + cc)
                inp = u[:, :, c0:c1].reshape(u.shape[0], r * (c1 - c0), *u.shape[3:])
                wt = w[:, :, c0:c1].permute(1, 0, 2, 3, 4).reshape(n, r * (c1 - c0), kh, kw)
                y = torch.nn.functional.conv2d(
                    inp, wt, None, geometry.stride, padding, geometry.dilation
                )  # exact: every partial sum is an integer below 2^24
                if c1 - c0 == c and self.factors.denom == 1:
                    return y.to(torch.int32).view(x.shape[0], 1, n, ho * wo)
                out = y.to(torch.int64) if out is None else out.add_(y.to(torch.int64))
        assert out is not None  # c >= 1
        if self.factors.denom != 1:
            out = torch.div(out, self.factors.denom, rounding_mode="floor")
        return out.to(torch.int32).reshape(x.shape[0], 1, n, ho * wo)

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        """a: [G, M, K] codes 0..255 -> int32 [G, M, N]: Σ_j U_j[A] @ V_j[B], in exact float chunks of K."""
        g, m, k = a.shape
        n = self.vb.shape[3]
        out = torch.zeros(g, m, n, dtype=torch.int64, device=a.device)
        if m == 0 or k == 0 or n == 0:
            return out.to(torch.int32)
        with exact_float_matmul():
            return _apply(a, self, out)


def build_lowrank_weights(b: torch.Tensor, factors: LowRankFactors) -> LowRankWeights:
    """b: [G, K, N] codes 0..255."""
    k = b.shape[1]
    dtype, chunk = factors.float_plan(k)
    v = torch.from_numpy(factors.v).to(device=b.device, dtype=dtype)  # [r, 256]
    vb = v[:, b.long()].contiguous()  # [r, G, K, N]
    u_t = torch.from_numpy(factors.u.T.copy()).to(device=b.device, dtype=dtype)
    return LowRankWeights(factors, u_t, vb, dtype, chunk)


@contextmanager
def exact_float_matmul() -> Iterator[None]:
    """Full-precision float32 GEMMs (no TF32 on CUDA, no bf16 through oneDNN), whatever the user set
    with torch.set_float32_matmul_precision: reduced precision would round the integer sums."""
    # torch.backends.mkldnn.matmul is set up at run time: torch's type stubs do not declare it
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]  # type: ignore[attr-defined]
    if not all(hasattr(b, "fp32_precision") for b in backends):  # torch < 2.9: the legacy switches
        tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return
    saved = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, v in zip(backends, saved):
            b.fp32_precision = v


@contextmanager
def exact_float_conv() -> Iterator[None]:
    """Full-precision float32 convolutions through oneDNN (no bf16 / tf32), whatever the user set."""
    conv = getattr(torch.backends.mkldnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):  # torch < 2.9: always full precision
        yield
        return
    saved = conv.fp32_precision
    try:
        conv.fp32_precision = "ieee"
        yield
    finally:
        conv.fp32_precision = saved


def _apply(a: torch.Tensor, w: LowRankWeights, out: torch.Tensor) -> torch.Tensor:
    g, m, k = a.shape
    # rows in blocks whose gathered U_j[A] stays cache-sized, converted to int32 per block: converting all of
    # A at once (75 MB at M=131072, K=144) made lowrank 2x slower per row at large M than at small M
    block = max(1, APPLY_BLOCK_ELEMENTS // max(1, g * min(k, w.chunk)))
    for m0 in range(0, m, block):
        rows = a[:, m0 : m0 + block].to(torch.int32)
        for k0 in range(0, k, w.chunk):
            k1 = min(k, k0 + w.chunk)
            idx = rows[:, :, k0:k1].contiguous()
            acc = None
            for j in range(w.factors.rank):
                # a flat index_select is the fastest CPU gather (several times faster than F.embedding)
                uj = w.u_t[j].index_select(0, idx.view(-1)).view(idx.shape)
                vj = w.vb[j, :, k0:k1]
                acc = torch.bmm(uj, vj) if acc is None else torch.baddbmm(acc, uj, vj)
            assert acc is not None  # rank >= 1
            out[:, m0 : m0 + block] += acc.to(torch.int64)
    if w.factors.denom != 1:
        out = torch.div(out, w.factors.denom, rounding_mode="floor")
    return out.to(torch.int32)
