"""Closed-form product tables of the built-in families that are not built as circuits, and the
sign-magnitude wrapper that makes a signed table from an unsigned core.

Every function returns int32 [256, 256], `table[a, b]` with a = activation (first index), b = weight.
"""

from __future__ import annotations

import numpy as np

from dse.multipliers.core import operand_values


def _ints() -> tuple[np.ndarray, np.ndarray]:
    v = np.arange(256, dtype=np.int64)
    return v[:, None], v[None, :]


def leading_one(x: np.ndarray) -> np.ndarray:
    """floor(log2 x) for x >= 1 (int64); -1 for x == 0."""
    out = np.full(x.shape, -1, dtype=np.int64)
    nz = x > 0
    out[nz] = np.floor(np.log2(x[nz])).astype(np.int64)
    return out


def drum_operand(x: np.ndarray, k: int) -> np.ndarray:
    """DRUM-k operand approximation: k bits from the leading one, kept LSB forced to 1."""
    p = leading_one(x)
    shift = np.maximum(p - k + 1, 0)
    approx = (((x >> shift) | 1) << shift).astype(np.int64)
    return np.where(p < k, x, approx)


def drum_table(k: int) -> np.ndarray:
    """DRUM-k: the product of the two DRUM-k operand approximations."""
    a, b = _ints()
    out: np.ndarray = (drum_operand(a, k) * drum_operand(b, k)).astype(np.int32)
    return out


def mitchell_table() -> np.ndarray:
    """Mitchell's logarithmic multiplier with an exact integer datapath."""
    a, b = np.broadcast_arrays(*_ints())
    ka, kb = leading_one(a), leading_one(b)
    nz = (a > 0) & (b > 0)
    ka, kb = np.maximum(ka, 0), np.maximum(kb, 0)
    fa, fb = a - (1 << ka), b - (1 << kb)  # mantissa fractions times 2^ka, 2^kb
    s = fa * (1 << kb) + fb * (1 << ka)  # 2^(ka+kb) · (xa + xb)
    base = 1 << (ka + kb)
    prod = np.where(s < base, base + s, 2 * s)
    return np.where(nz, prod, 0).astype(np.int32)


def round_pow2(x: np.ndarray) -> np.ndarray:
    """The nearest power of two (ties round up); 0 for 0."""
    p = np.maximum(leading_one(x), 0)
    up = (p >= 1) & (((x >> np.maximum(p - 1, 0)) & 1) == 1)
    out: np.ndarray = np.where(x == 0, 0, np.where(up, 1 << (p + 1), 1 << p))
    return out


def roba_table() -> np.ndarray:
    """RoBA: A·B ≈ Ar·B + Br·A − Ar·Br with Ar, Br the operands rounded to powers of two."""
    a, b = _ints()
    ar, br = round_pow2(a), round_pow2(b)
    out: np.ndarray = (ar * b + br * a - ar * br).astype(np.int32)
    return out


def etm_table(k: int) -> np.ndarray:
    """Error-tolerant multiplier split at bit k (see `dse.multipliers.catalogue`)."""
    a, b = np.broadcast_arrays(*_ints())
    mask = (1 << k) - 1
    ahi, alo, bhi, blo = a >> k, a & mask, b >> k, b & mask
    v = alo | blo
    fill = np.where(v > 0, (1 << (leading_one(v) + 1)) - 1, 0)
    approx = ((ahi * bhi) << (2 * k)) + (fill << k)
    return np.where((ahi == 0) & (bhi == 0), alo * blo, approx).astype(np.int32)


def perforated_table(s: int, k: int) -> np.ndarray:
    """Partial-product perforation: the rows s .. s+k-1 (bits of b) are skipped."""
    a, b = _ints()
    keep = 0xFF & ~(((1 << k) - 1) << s)
    out: np.ndarray = (a * (b & keep)).astype(np.int32)
    return out


def sign_magnitude_table(core: np.ndarray) -> np.ndarray:
    """Signed table from an unsigned core: lut[a & 0xFF, b & 0xFF] = sign(a)·sign(b)·core[|a|, |b|].

    |−128| = 128 is a valid index of the 8-bit unsigned core, so every int8 operand is covered."""
    v = operand_values(signed=True)
    mag = np.abs(v)
    sign = np.sign(v)
    core64 = np.asarray(core, dtype=np.int64)
    return (np.outer(sign, sign) * core64[np.ix_(mag, mag)]).astype(np.int32)
