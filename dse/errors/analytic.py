"""Analytic error propagation through a GEMM (P1, our derivation of its abstract; docs/REFERENCES.md).

A GEMM Y = X W (X ∈ Z^{M×K}, W ∈ Z^{K×N}) computed with an approximate multiplier has the error
ΔY_ij = Σ_k ε(x_ik, w_kj), ε = approximate − exact. With operand pairs drawn i.i.d. from p_x(a)·p_w(b)
and μ, σ² the error table's moments under that distribution:

    E‖ΔY‖_F² = M·N·(K·σ² + K²·μ²)        (variance term K·σ², bias term K²·μ²)

Everything here is in accumulator units (integer products); multiply by the layer's output scale for
float units. Histograms are normalised 256-bin arrays indexed by the operand's byte (value & 0xFF).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


def error_moments(err: np.ndarray, hist_x: np.ndarray, hist_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ and variance σ² of the error table(s) under p_x(a)·p_w(b).

    err: [256, 256] or [M, 256, 256] (ε[a_byte, w_byte]); hist_x, hist_w: [256] (normalised here).
    Returns (μ, σ²), scalars or [M] arrays.
    """
    hx = np.asarray(hist_x, dtype=np.float64)
    hw = np.asarray(hist_w, dtype=np.float64)
    hx = hx / hx.sum()
    hw = hw / hw.sum()
    e = np.asarray(err, dtype=np.float64)
    mu = np.einsum("a,...ab,b->...", hx, e, hw)
    second = np.einsum("a,...ab,b->...", hx, e * e, hw)
    var = np.maximum(second - mu * mu, 0.0)
    return mu, var


def column_moments(
    err: np.ndarray, hist_x: np.ndarray, col_hists: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Like `error_moments`, with one weight histogram per output column: col_hists [N, 256] (each
    normalised here). err [M, 256, 256] -> (μ, σ²) both [M, N]."""
    hx = np.asarray(hist_x, dtype=np.float64)
    hx = hx / hx.sum()
    hw = np.asarray(col_hists, dtype=np.float64)
    hw = hw / np.maximum(hw.sum(axis=1, keepdims=True), 1e-300)
    e = np.asarray(err, dtype=np.float64)
    mu = np.einsum("ma,na->mn", np.einsum("a,mab->mb", hx, e), hw)
    second = np.einsum("ma,na->mn", np.einsum("a,mab->mb", hx, e * e), hw)
    return mu, np.maximum(second - mu * mu, 0.0)


def layer_rms_error(
    err: np.ndarray, hist_x: np.ndarray, col_hists: np.ndarray, fan_in: int, col_scale: np.ndarray
) -> np.ndarray:
    """P1's predicted RMS output error per entry of one layer, float units, for every table: [M].

    Column n (fan-in K, float scale s_n per accumulator unit) gets E[ΔY²] = s_n²·(K·σ_n² + K²·μ_n²) with
    μ_n, σ_n² the error moments under p_x·p_w,n (`column_moments`); the layer's mean over its columns,
    square-rooted. No operand sampling: only the layer's byte histograms. Divide by the exact output's RMS
    for the relative distortion ‖ΔY‖_F/‖Y‖_F that `dse analyze` measures.
    """
    mu, var = column_moments(err, hist_x, col_hists)
    s2 = np.asarray(col_scale, dtype=np.float64) ** 2
    k = float(fan_in)
    out: np.ndarray = np.sqrt(((k * var + k * k * mu * mu) * s2[None, :]).mean(axis=1))
    return out


@dataclass(frozen=True)
class Distortion:
    """Expected squared Frobenius norm of a GEMM's output error, split into its two terms.

    `variance_term` = M·N·K·σ², `bias_term` = M·N·K²·μ², `frob_sq` their sum; `rms` = √(frob_sq/(M·N)),
    the RMS error per output entry; `bias_fraction` = the bias term's share.
    """

    variance_term: float
    bias_term: float
    entries: int

    @property
    def frob_sq(self) -> float:
        return self.variance_term + self.bias_term

    @property
    def frob(self) -> float:
        return float(np.sqrt(self.frob_sq))

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.frob_sq / self.entries))

    @property
    def bias_fraction(self) -> float:
        return self.bias_term / self.frob_sq if self.frob_sq > 0 else 0.0


def gemm_distortion(mu: float, var: float, fan_in: int, rows: int = 1, cols: int = 1) -> Distortion:
    """E‖ΔY‖_F² = rows·cols·(K·σ² + K²·μ²) for i.i.d. operands (correlated rows only widen its spread)."""
    entries = int(rows) * int(cols)
    return Distortion(
        variance_term=float(entries * fan_in * var),
        bias_term=float(entries * fan_in**2 * mu**2),
        entries=entries,
    )


def compensated_distortion(var: float, fan_in: int, rows: int = 1, cols: int = 1) -> Distortion:
    """Distortion after bias compensation (subtract K·μ from every accumulator): rows·cols·K·σ²."""
    return gemm_distortion(0.0, var, fan_in, rows, cols)


def crossover_fan_in(mu: float, var: float) -> float:
    """K* = σ²/μ²: the fan-in at which bias and variance terms are equal (inf for an unbiased table)."""
    return float(var / mu**2) if mu != 0 else float("inf")


def bias_fraction(mu: float, var: float, fan_in: ArrayLike) -> np.ndarray | float:
    """Share of the distortion due to the bias: K·μ²/(σ² + K·μ²); increases monotonically in K."""
    k = np.asarray(fan_in, dtype=np.float64)
    denom = var + k * mu**2
    out = np.where(denom > 0, k * mu**2 / np.where(denom > 0, denom, 1.0), 0.0)
    return float(out) if out.ndim == 0 else out


def relative_model_distortion(x: np.ndarray, w: np.ndarray, mu_r: float, sigma_r: float) -> float:
    """Relative-error multipliers m̃ = ab(1+δ), δ independent with mean μ_r and std σ_r:
    E‖ΔY‖_F² = μ_r²‖XW‖_F² + σ_r² Σ_ijk (x_ik w_kj)²."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    y = x @ w
    sq = (x * x) @ (w * w)
    return float(mu_r**2 * (y * y).sum() + sigma_r**2 * sq.sum())


def p2_mre(err: np.ndarray, signed: bool, n: int = 2**7) -> float:
    """P2's mean relative error (docs/REFERENCES.md, P2 Eq. 2), reproduced as written:
    MRE = (1/n²) Σ_{i,j=0..n} |m̃(i, j) − ij| / max(1, |ij|), n = 2^7.

    err: one byte-indexed error table ε[a_byte, w_byte] = m̃ − exact ([256, 256]). The sums run over the
    non-negative operand values 0..n (the (n+1)² terms normalised by n², as the paper does); in a signed
    format n = 128 is not representable, so there they stop at 127. 0 for an exact multiplier.
    """
    e = np.asarray(err, dtype=np.float64)
    if e.shape != (256, 256):
        raise ValueError(f"p2_mre: expected a [256, 256] error table, got {list(e.shape)}")
    top = min(int(n), 127 if signed else 255)
    v = np.arange(top + 1)
    block = np.abs(e[np.ix_(v, v)])  # values 0..top are their own byte codes in both formats
    prod = np.outer(v, v).astype(np.float64)
    return float((block / np.maximum(1.0, prod)).sum() / float(n) ** 2)
