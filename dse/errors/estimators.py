"""σ predictors as pure array functions: predicted std and mean of a layer's output error per multiplier.

Inputs are byte-indexed (value & 0xFF) 8-bit codes and *effective* error tables ε[a_byte, w_byte]
(the error the kernel adds for that code pair, with the sign-magnitude weight sign already folded in,
see `error_tables`). Outputs are in accumulator units times `col_scale` (the per-output-column float
scale), i.e. float output units before bias when `col_scale` is the layer's output scale.

Three predictors (P3 and two refinements of it; docs/REFERENCES.md):
- `predict_p3`: P3's published population model: local activation histograms of sampled receptive
  fields against one global weight histogram, pooled by the law of total variance:
  σ = √(K·mean_i σ_i² + K²·Var_i μ_i).
- `predict_weight_aware`: the same pooled over (field, output column) pairs with each column's own
  weight histogram (catches the per-column bias Σ_k sign(w)·μ(|w|) that a global histogram averages away).
- `predict_sampled`: the table applied to the sampled rows with the real weights; std and mean of the
  resulting output errors (no independence assumption at all). The default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
from numpy.typing import ArrayLike

from dse.multipliers.core import Multiplier, exact_table, operand_values

# Exact low-rank factors (U [256, r], V [256, r]) of one error table, or None when it has no small rank.
Factors: TypeAlias = "tuple[np.ndarray, np.ndarray] | None"


def byte_histogram(codes: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    """256-bin counts of 8-bit codes by their byte (value & 0xFF): unsigned code c lands in bin c, a
    signed code v in bin v & 0xFF (two's complement). Never shifted by 128."""
    c = np.asarray(codes).astype(np.int64).reshape(-1) & 0xFF
    return np.bincount(c, weights=weights, minlength=256).astype(np.float64)


def row_histograms(rows: np.ndarray) -> np.ndarray:
    """[S, K] codes -> [S, 256] normalised per-row byte histograms."""
    rows = np.asarray(rows).astype(np.int64) & 0xFF
    s = rows.shape[0]
    flat = (np.arange(s)[:, None] * 256 + rows).reshape(-1)
    h = np.bincount(flat, minlength=s * 256).reshape(s, 256).astype(np.float64)
    out: np.ndarray = h / rows.shape[1]
    return out


def error_tables(multipliers: Sequence[Multiplier], weight_scheme: str = "symmetric") -> np.ndarray:
    """Effective error tables float64 [M, 256, 256] as the kernel sees them.

    `symmetric` (signed) and `affine` (uint8 × uint8, zero-point corrections exact): ε itself.
    `sign-magnitude`: the weight byte holds an int8 code w in [-127, 127]; the product is
    sign(w)·m̃(a, |w|), so ε_eff[a, w & 0xFF] = sign(w)·ε[a, |w|].
    """
    out = np.empty((len(multipliers), 256, 256), dtype=np.float64)
    for i, m in enumerate(multipliers):
        err = m.error_table.astype(np.float64)
        if weight_scheme == "sign-magnitude":
            if m.signed:
                raise ValueError(f"{m.name}: sign-magnitude weights need an unsigned table")
            w = operand_values(True)  # byte -> int8 value
            out[i] = np.sign(w)[None, :] * err[:, np.abs(w)]
        else:
            out[i] = err
    return out


def exact_effective_table(signed: bool, weight_scheme: str) -> np.ndarray:
    """The exact product in the effective orientation (for tests and measurements)."""
    if weight_scheme == "sign-magnitude":
        w = operand_values(True)
        table: np.ndarray = np.sign(w)[None, :] * exact_table(False).astype(np.float64)[:, np.abs(w)]
        return table
    return exact_table(signed).astype(np.float64)


def _scale_stats(col_scale: ArrayLike | None, n_cols: int) -> np.ndarray:
    s = np.ones(n_cols) if col_scale is None else np.asarray(col_scale, np.float64).reshape(-1)
    return np.broadcast_to(s, (n_cols,)) if s.size == 1 else s


def predict_p3(
    local_hists: np.ndarray,
    hist_w: np.ndarray,
    err: np.ndarray,
    fan_in: int,
    col_scale: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """P3's population model (paper Eqs. 15–16 via agn-approx): per sampled field i, (μ_i, σ_i²) of the
    table under (local p_x^{(i)}, global p_w); the accumulator error X has Var X = K·mean σ_i² +
    K²·Var μ_i and E X = K·mean μ_i. Pooled over output columns with their float scales s (independent
    of X): Var(sX) = E[s²]·Var X + Var(s)·(E X)², mean E[s]·E X (the Var(s) term matters for a biased
    table with spread scales: scales 0.2–2.0, K = 64, truncation: 799 with it, 239 without).

    local_hists [S, 256] (rows normalised), hist_w [256], err [M, 256, 256], col_scale: one scale or
    one per output column. Returns (σ [M], mean [M]).
    """
    hx = np.asarray(local_hists, np.float64)
    hw = np.asarray(hist_w, np.float64)
    hw = hw / hw.sum()
    e = np.asarray(err, np.float64)
    ew = e @ hw  # [M, 256]: E_w[ε | a]
    e2w = (e * e) @ hw
    mu_i = hx @ ew.T  # [S, M]
    var_i = np.maximum(hx @ e2w.T - mu_i**2, 0.0)
    k = float(fan_in)
    var_x = k * var_i.mean(axis=0) + k * k * mu_i.var(axis=0)
    mean_x = k * mu_i.mean(axis=0)
    s = np.atleast_1d(np.asarray(1.0 if col_scale is None else col_scale, np.float64)).reshape(-1)
    var_out = np.mean(s * s) * var_x + np.var(s) * mean_x**2
    return np.sqrt(var_out), mean_x * np.mean(s)


def predict_weight_aware(
    local_hists: np.ndarray,
    col_hists: np.ndarray,
    err: np.ndarray,
    fan_in: int,
    col_scale: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """P3 pooled over (field i, column n) with each column's own weight histogram and float scale s_n:
    per pair mean K·μ_in·s_n and variance K·σ_in²·s_n²; pooled by the law of total variance.

    local_hists [S, 256], col_hists [N, 256] (rows normalised), err [M, 256, 256]. Returns (σ, mean) [M].
    """
    hx = np.asarray(local_hists, np.float64)
    hw = np.asarray(col_hists, np.float64)
    hw = hw / hw.sum(axis=1, keepdims=True)
    e = np.asarray(err, np.float64)
    s = _scale_stats(col_scale, hw.shape[0])
    k = float(fan_in)
    sig = np.empty(e.shape[0])
    mean = np.empty(e.shape[0])
    for m in range(e.shape[0]):
        xe = hx @ e[m]  # [S, 256]
        xe2 = hx @ (e[m] * e[m])
        mu = xe @ hw.T  # [S, N]
        var = np.maximum(xe2 @ hw.T - mu**2, 0.0)
        mu_out = k * mu * s[None, :]
        var_out = k * var * (s * s)[None, :]
        mean[m] = mu_out.mean()
        sig[m] = np.sqrt(var_out.mean() + mu_out.var())
    return sig, mean


LOWRANK_MIN_TABLE = 1 << 21  # bag table entries per multiplier above which low-rank GEMMs pay


def factorize(err: np.ndarray, max_rank: int = 16) -> list[Factors]:
    """Per table, low-rank factors (U [256, r], V [256, r]) with ε = U·Vᵀ (to float precision) when its
    rank r ≤ max_rank, else None. Most built-in tables have rank ≤ 12 (truncation, broken arrays, DRUM…).
    Randomised range finder (one [256, 256]×[256, max_rank+4] product and a small SVD per table): cheap."""
    rng = np.random.default_rng(0)
    omega = rng.standard_normal((256, max_rank + 4))
    out: list[Factors] = []
    for e in np.asarray(err, np.float64):
        norm = np.linalg.norm(e)
        if norm == 0:
            out.append((np.zeros((256, 0)), np.zeros((256, 0))))
            continue
        q, _ = np.linalg.qr(e @ omega)
        b = q.T @ e
        if np.linalg.norm(e - q @ b) > 1e-9 * norm:
            out.append(None)
            continue
        ub, sv, vt = np.linalg.svd(b, full_matrices=False)
        r = int((sv > sv[0] * 1e-10).sum())
        if r > max_rank:
            out.append(None)
            continue
        out.append(((q @ ub[:, :r]) * sv[:r], vt[:r].T.copy()))
    return out


def sampled_errors(
    rows: np.ndarray,
    weights: np.ndarray,
    err: np.ndarray,
    factors: Sequence[Factors] | None = None,
    chunk_bytes: int = 64 << 20,
) -> np.ndarray:
    """Accumulator error of every multiplier on every sampled row and output column:
    out[m, s, n] = Σ_k err[m, rows[s, k], weights[k, n]] (bytes), float64 [M, S, N].

    Low-rank tables (see `factorize`) on large layers: Σ_r U_r[rows] @ V_r[weights], float32 GEMMs
    (relative error ~1e-6).
    The rest: a weight-stationary embedding bag over T[a·K + k, (n, m)] = err[m, a, w_kn] (float32 sums
    of integers, exact below 2^24).
    """
    import torch
    import torch.nn.functional as F

    rows_t = torch.as_tensor(np.asarray(rows).astype(np.int64) & 0xFF)
    w_t = torch.as_tensor(np.asarray(weights).astype(np.int64) & 0xFF)
    n_mult = len(err)
    s, k = rows_t.shape
    n = w_t.shape[1]
    out = torch.empty(n_mult, s, n, dtype=torch.float64)
    if factors is None or k * n * 256 <= LOWRANK_MIN_TABLE:
        factors = [None] * n_mult  # small layers: the bag's table stays in cache and is faster
    dense = [m for m in range(n_mult) if factors[m] is None]
    for m in range(n_mult):
        fm = factors[m]
        if fm is None:
            continue
        u, v = fm
        if u.shape[1] == 0:
            out[m] = 0.0
            continue
        r = u.shape[1]
        # float32 GEMM: relative error ~1e-6 of the row's error, far below what a std estimate needs
        ua = torch.as_tensor(u, dtype=torch.float32)[rows_t].reshape(s, k * r)  # [S, (K, r)]
        vw = (
            torch.as_tensor(v.T, dtype=torch.float32)[:, w_t].permute(1, 0, 2).reshape(k * r, n)
        )  # [(K, r), N]
        out[m] = (ua @ vw).double()
    if dense:
        e_t = torch.as_tensor(np.asarray(err)[dense], dtype=torch.float32)
        idx = rows_t * k + torch.arange(k)[None, :]  # [S, K] rows of T, ordered (a, k)
        step = max(1, min(len(dense), chunk_bytes // max(k * 256 * n * 4, 1)))
        for c0 in range(0, len(dense), step):
            c1 = min(len(dense), c0 + step)
            e2 = e_t[c0:c1].permute(1, 2, 0).contiguous()  # [256 a, 256 w, m]
            t = e2[:, w_t].reshape(256 * k, n * (c1 - c0))  # T[(a, k), (n, m)] = err[m, a, w_kn]
            bag = F.embedding_bag(idx, t, mode="sum")  # [S, N*m]
            out[dense[c0:c1]] = bag.reshape(s, n, c1 - c0).permute(2, 0, 1).double()
    return out.numpy()


def predict_sampled(
    rows: np.ndarray,
    weights: np.ndarray,
    err: np.ndarray,
    col_scale: ArrayLike | None = None,
    factors: Sequence[Factors] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The table applied to sampled calibration rows with the real weights: std and mean of the output
    error over (rows × columns), each column scaled by its float scale. Returns (σ [M], mean [M])."""
    e = sampled_errors(rows, weights, err, factors)  # [M, S, N]
    s = _scale_stats(col_scale, e.shape[2])
    e = e * s[None, None, :]
    flat = e.reshape(e.shape[0], -1)
    return flat.std(axis=1), flat.mean(axis=1)
