"""The `triton` backend's weight-stationary tables, built on the host once per (weights, table) pair.

For weights B [G, K, N] and a table L the kernels read T[g, k, a, n] = L[a, B[g, k, n]]: each (k, activation
code) row is N contiguous entries, one coalesced segment per gather.

Narrow entries. The table is stored as *residuals* in 16 bits whenever it fits: per weight code b,
L[a, b] ≈ a·c(b) + off(b) is fitted and R[a, b] = L[a, b] − a·c(b) − off(b) ∈ [0, RESIDUAL_MAX] is kept,
stored as the int16 R − RESIDUAL_OFFSET. The kernels add a·c for each gathered entry (one integer
multiply-add, free next to the gather) and the bias Σ_k (off + RESIDUAL_OFFSET) once per output.
Every real multiplier table (exact, truncated, evolved, sign-magnitude with the weight's sign folded in) is
close to linear in the activation for each weight code, so its residuals fit, which halves the bytes every
lookup moves. Tables whose residuals do not fit (e.g. random tables in tests) keep int32 entries.
The decomposition is exact modulo 2^32, so the kernels' int32 sums are exactly the contract's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RESIDUAL_MAX = 65535  # residuals are stored in 16 bits (as int16, offset by RESIDUAL_OFFSET)
RESIDUAL_OFFSET = 32768


@dataclass
class TritonTables:
    """Weight-stationary table of one or more (weights, table) pairs, N concatenated.

    `t` is int32 [G, K, 256, N] (plain entries) or int16 (residuals − RESIDUAL_OFFSET; then `c` int32
    [G, K, N] holds the slopes and `bias` int32 [G, N] Σ_k (off + RESIDUAL_OFFSET))."""

    t: torch.Tensor
    c: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @property
    def linear(self) -> bool:
        """Residual entries: the kernels add a·c per lookup and the bias per output."""
        return self.c is not None

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.t, self.c, self.bias) if x is not None)

    def pointers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(table, slopes, bias) for a kernel launch; without residuals the kernels never read the slopes
        and bias, and the table stands in for them (any valid pointer)."""
        return self.t, self.t if self.c is None else self.c, self.t if self.bias is None else self.bias


def linear_residual(lut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(R int64 [256, 256], c int64 [256], off int64 [256]) with
    lut[a, b] = R[a, b] + a·c[b] + off[b] and 0 <= R <= RESIDUAL_MAX, or None when a column does not fit.

    c[b] is the least-squares slope of column b over a = 0..255, rounded; off[b] the column's minimum residual."""
    t = lut.to(torch.float64).cpu()
    a = torch.arange(256, dtype=torch.float64)
    ac = a - a.mean()
    c = torch.round((ac[:, None] * (t - t.mean(0))).sum(0) / (ac * ac).sum())
    ci = c.to(torch.int64)
    r = lut.cpu().to(torch.int64) - torch.arange(256)[:, None] * ci[None, :]
    off = r.min(0).values
    r = r - off
    if int(r.max()) > RESIDUAL_MAX:
        return None
    return r, ci, off


def weight_stationary_table(b: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """T[g, k, a, n] = lut[a, b[g, k, n]] as [G, K, 256, N] (lut's dtype)."""
    return lut.t().contiguous()[b.long()].permute(0, 1, 3, 2)


def build_triton_tables(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> TritonTables:
    """pairs of (B [G, K, N] uint8 codes, lut int32 [256,256]) -> TritonTables, N concatenated. Residual
    (int16) entries when every pair's table fits, else plain int32 entries."""
    fits = [linear_residual(lut) for _, lut in pairs]
    if any(f is None for f in fits):
        parts = [weight_stationary_table(b, lut) for b, lut in pairs]
        return TritonTables(_cat(parts, 3))
    ts, cs, biases = [], [], []
    for (b, _), fit in zip(pairs, fits):
        assert fit is not None  # checked above
        r, c, off = fit
        dev = b.device
        ts.append(weight_stationary_table(b, (r - RESIDUAL_OFFSET).to(torch.int16).to(dev)))
        bl = b.long()
        cs.append(c.to(dev)[bl].to(torch.int32))  # [G, K, N]
        bias = (off + RESIDUAL_OFFSET).to(dev)[bl].sum(1)  # [G, N], int64; wrapped to int32 like the sums
        biases.append(((bias + 2**31) % 2**32 - 2**31).to(torch.int32))
    return TritonTables(_cat(ts, 3), _cat(cs, 2), _cat(biases, 1))


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return (torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0]).contiguous()
