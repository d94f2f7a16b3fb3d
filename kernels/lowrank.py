"""The `lowrank` backend: an exact integer factorisation of a low-rank table into a few dense GEMMs.

A table of exact rank r is written as  denom · L = U @ V  with integer U [256, r], V [r, 256] and a positive
integer `denom` (1 for DRUM-k, exact and most truncated tables). Then

    denom · out[m, n] = Σ_k Σ_j U[a[m,k], j] · V[j, b[k,n]]  =  (U[A] as [M, K·r]) @ (V[:, B] as [K·r, N])

which is one float GEMM. It is exact because every term and every partial sum is an integer of magnitude
below 2^24 (float32) or 2^53 (float64): K is cut into chunks small enough for that, each chunk's result is
rounded to int64 (it already is an integer) and the chunks are added in int64, then divided by `denom`.

Factorisation (once per table, a few ms, kept in a small bounded cache keyed by the table's bytes):
floating-point SVD gives the candidate rank r, column-pivoted QR picks r pivot rows P and columns Q; with
M = L[P, Q], D = det M and adj(M) = D·M⁻¹ computed in Python integers, U = L[:, Q]·adj(M), V = L[P, :],
and D·L == U·V is *verified in exact integer arithmetic* (a table whose true rank is higher fails the check
and is reported as not low-rank). Row contents of V and the common factor of U and D are divided out to keep
the magnitudes (and so the float dtype and chunk size) small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from dse.kernels.cpu import FLOAT32_EXACT, FLOAT64_EXACT

MAX_RANK = 16  # tables of higher rank are never worth it (>= 16 GEMMs)
MIN_FLOAT32_CHUNK = 64  # below this many K steps per exact float32 chunk, float64 GEMMs are faster
APPLY_BLOCK_ELEMENTS = 1 << 22  # rows of U[A] materialised per GEMM block (bounded memory)


@dataclass(frozen=True)
class LowRankFactors:
    """denom · lut == u @ v exactly; u int64 [256, r] (activation side), v int64 [r, 256] (weight side)."""

    u: np.ndarray
    v: np.ndarray
    denom: int

    @property
    def rank(self) -> int:
        return self.u.shape[1]

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


def _factorize(lut: np.ndarray) -> LowRankFactors | None:
    import scipy.linalg

    lf = lut.astype(np.float64)
    if not lf.any():
        return LowRankFactors(np.zeros((256, 1), np.int64), np.zeros((1, 256), np.int64), 1)
    s = np.linalg.svd(lf, compute_uv=False)
    r = int((s > s[0] * 256 * np.finfo(np.float64).eps).sum())
    if r > MAX_RANK:
        return None
    _, _, col_piv = scipy.linalg.qr(lf, pivoting=True, mode="economic")
    _, _, row_piv = scipy.linalg.qr(lf.T, pivoting=True, mode="economic")
    rows, cols = sorted(row_piv[:r].tolist()), sorted(col_piv[:r].tolist())
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
    """V[:, B] for weights B [G, K, N], as the right-hand GEMM operand [G, K·r, N], plus the plan."""

    factors: LowRankFactors
    u: torch.Tensor  # [256, r] float
    vb: torch.Tensor  # [G, K·r, N] float
    dtype: torch.dtype
    chunk: int
    k: int

    @property
    def nbytes(self) -> int:
        return self.vb.numel() * self.vb.element_size()


def build_lowrank_weights(b: torch.Tensor, factors: LowRankFactors) -> LowRankWeights:
    """b: [G, K, N] codes 0..255."""
    g, k, n = b.shape
    dtype, chunk = factors.float_plan(k)
    r = factors.rank
    v_t = torch.from_numpy(factors.v.T.copy()).to(device=b.device, dtype=dtype)  # [256, r]
    vb = F.embedding(b.long(), v_t).permute(0, 1, 3, 2).reshape(g, k * r, n).contiguous()
    u = torch.from_numpy(factors.u).to(device=b.device, dtype=dtype)
    return LowRankWeights(factors, u, vb, dtype, chunk, k)


def apply_lowrank(a: torch.Tensor, w: LowRankWeights) -> torch.Tensor:
    """a: [G, M, K] codes 0..255 -> int32 [G, M, N]."""
    g, m, k = a.shape
    n = w.vb.shape[2]
    r = w.factors.rank
    out = torch.zeros(g, m, n, dtype=torch.int64, device=a.device)
    if m == 0 or k == 0 or n == 0:
        return out.to(torch.int32)
    a = a.long()
    block = max(1, APPLY_BLOCK_ELEMENTS // max(1, g * min(k, w.chunk) * r))
    for k0 in range(0, k, w.chunk):
        k1 = min(k, k0 + w.chunk)
        vb = w.vb[:, k0 * r : k1 * r]
        for m0 in range(0, m, block):
            ua = F.embedding(a[:, m0 : m0 + block, k0:k1], w.u)  # [G, mb, steps, r]
            prod = torch.bmm(ua.reshape(g, ua.shape[1], -1), vb)
            out[:, m0 : m0 + block] += prod.to(torch.int64)
    if w.factors.denom != 1:
        out = torch.div(out, w.factors.denom, rounding_mode="floor")
    return out.to(torch.int32)
