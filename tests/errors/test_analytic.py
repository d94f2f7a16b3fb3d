"""Monte-Carlo checks of the analytic error model (T1–T7, T11 of docs/REFERENCES.md) with synthetic tables.
The P2 generator (T8) is checked in tests/retrain/test_surrogates.py."""

from __future__ import annotations

import numpy as np
import pytest

from dse.errors import analytic as an
from dse.errors import estimators as est
from dse.multipliers.core import operand_values

VALUES = operand_values(True)  # signed byte -> value


def _dists():
    """ReLU-like activations (0..127, geometric-ish) and Gaussian weights, as signed-byte histograms."""
    a = np.arange(256)
    va = VALUES
    hx = np.where(va >= 0, np.exp(-va / 30.0), 0.0)
    hx[0] += 0.3 * hx.sum()  # many exact zeros after ReLU
    hw = np.exp(-0.5 * (VALUES / 30.0) ** 2)
    return hx / hx.sum(), hw / hw.sum(), a


def _trunc_table():
    """Floor truncation of the product to a multiple of 64 (biased)."""
    p = np.outer(VALUES, VALUES)
    return (((p >> 6) << 6) - p).astype(np.float64)


def _round_table():
    p = np.outer(VALUES, VALUES)
    return (np.round(p / 64.0) * 64 - p).astype(np.float64)


def _draw(rng, h, size):
    return rng.choice(256, size=size, p=h)


def _mc_iid(err, hx, hw, k, entries, reps, rng):
    """Independent operands for every entry: ΔY[r, e] = Σ_k err[x, w]. Returns [reps, entries]."""
    x = _draw(rng, hx, (reps, entries, k))
    w = _draw(rng, hw, (reps, entries, k))
    return err[x, w].sum(axis=2)


@pytest.mark.parametrize("k", [16, 64, 256, 1024])
def test_t1_frobenius_expectation(k):
    rng = np.random.default_rng(k)
    hx, hw, _ = _dists()
    err = _trunc_table()
    mu, var = an.error_moments(err, hx, hw)
    assert abs(mu) > 5 and var > 50  # the truncation table is biased and noisy
    entries, reps = 64, 40
    dy = _mc_iid(err, hx, hw, k, entries, reps, rng)
    measured = (dy**2).sum(axis=1).mean()
    predicted = an.gemm_distortion(mu, var, k, rows=8, cols=8).frob_sq
    assert measured == pytest.approx(predicted, rel=0.05)
    # a missing factor K on the bias term would be off by far more than 5 %
    assert abs(entries * (k * var + k * mu**2) - measured) / measured > 0.2


def test_t2_scaling_with_fan_in():
    rng = np.random.default_rng(2)
    hx, hw, _ = _dists()
    err = _round_table()
    mu, _ = an.error_moments(err, hx, hw)
    unbiased = err - mu  # exactly unbiased under (p_x, p_w)
    ks = np.array([16, 64, 256, 1024])
    rms = [np.sqrt((_mc_iid(unbiased, hx, hw, k, 64, 10, rng) ** 2).mean()) for k in ks]
    slope = np.polyfit(np.log(ks), np.log(rms), 1)[0]
    assert slope == pytest.approx(0.5, abs=0.05)
    biased = _trunc_table()
    mu_b, var_b = an.error_moments(biased, hx, hw)
    assert 1024 > 50 * an.crossover_fan_in(mu_b, var_b)
    rms_b = [np.sqrt((_mc_iid(biased, hx, hw, k, 64, 10, rng) ** 2).mean()) for k in ks]
    slope_b = np.polyfit(np.log(ks[2:]), np.log(rms_b[2:]), 1)[0]
    assert slope_b == pytest.approx(1.0, abs=0.05)
    assert rms_b[-1] / 1024 == pytest.approx(abs(mu_b), rel=0.03)


def test_t3_crossover_and_bias_fraction():
    rng = np.random.default_rng(3)
    hx, hw, _ = _dists()
    base = _round_table()
    mu0, var0 = an.error_moments(base, hx, hw)
    # shift so that μ = σ/8 exactly: K* = 64
    err = base - mu0 + np.sqrt(var0) / 8
    mu, var = an.error_moments(err, hx, hw)
    kstar = an.crossover_fan_in(mu, var)
    assert kstar == pytest.approx(64.0, rel=1e-9)
    d = an.gemm_distortion(mu, var, 64)
    assert d.bias_term == pytest.approx(d.variance_term, rel=1e-9)
    assert d.bias_fraction == pytest.approx(0.5)
    dy = _mc_iid(err, hx, hw, 64, 512, 20, rng).ravel()
    assert dy.mean() ** 2 == pytest.approx(dy.var(), rel=0.12)  # the two terms are equal by MC too
    fr = an.bias_fraction(mu, var, np.arange(1, 5000))
    assert np.all(np.diff(fr) > 0)
    assert an.crossover_fan_in(0.0, var) == float("inf")


def test_t4_bias_compensation():
    rng = np.random.default_rng(4)
    hx, hw, _ = _dists()
    err = _trunc_table()
    mu, var = an.error_moments(err, hx, hw)
    for k in (16, 256):
        dy = _mc_iid(err, hx, hw, k, 64, 40, rng)
        comp = dy - k * mu
        measured = (comp**2).sum(axis=1).mean()
        assert measured == pytest.approx(an.compensated_distortion(var, k, 8, 8).frob_sq, rel=0.05)
        assert measured < (dy**2).sum(axis=1).mean()
        assert an.compensated_distortion(var, k).frob_sq <= an.gemm_distortion(mu, var, k).frob_sq


def test_t5_table_algebra():
    rng = np.random.default_rng(5)
    hx, hw, _ = _dists()
    err = _trunc_table()
    mu, var = an.error_moments(err, hx, hw)
    z_mu, z_var = an.error_moments(np.zeros((256, 256)), hx, hw)
    assert z_mu == 0 and z_var == 0
    rows = _draw(rng, hx, (64, 32))
    w = _draw(rng, hw, (32, 8))
    s0, m0 = est.predict_sampled(rows, w, np.zeros((1, 256, 256)))
    assert s0[0] == 0 and m0[0] == 0
    # e -> c·e scales RMS by |c| (both by MC and by the moments)
    s1, m1 = est.predict_sampled(rows, w, np.stack([err, -3 * err]))
    assert np.sqrt(s1[1] ** 2 + m1[1] ** 2) == pytest.approx(3 * np.sqrt(s1[0] ** 2 + m1[0] ** 2), rel=1e-6)
    mu3, var3 = an.error_moments(-3 * err, hx, hw)
    assert mu3 == pytest.approx(-3 * mu) and var3 == pytest.approx(9 * var)
    # e -> e + c shifts μ by c, σ unchanged
    mu_c, var_c = an.error_moments(err + 7.5, hx, hw)
    assert mu_c == pytest.approx(mu + 7.5) and var_c == pytest.approx(var, rel=1e-9)
    # LLN: histogram-weighted μ equals the empirical mean over sampled operand pairs
    xs, ws = _draw(rng, hx, 200_000), _draw(rng, hw, 200_000)
    assert err[xs, ws].mean() == pytest.approx(mu, rel=0.02)
    # uniform weighting differs strongly from histogram weighting for ReLU inputs
    mu_u, _ = an.error_moments(err, np.ones(256), np.ones(256))
    assert abs(mu_u - mu) > 0.1 * abs(mu)


def test_t6_shared_rows_keep_the_expectation():
    rng = np.random.default_rng(6)
    hx, hw, _ = _dists()
    err = _trunc_table()
    mu, var = an.error_moments(err, hx, hw)
    k, m, n, reps = 64, 16, 16, 200
    shared, indep = [], []
    for _ in range(reps):
        x = _draw(rng, hx, (m, k))
        w = _draw(rng, hw, (k, n))
        dy = err[x[:, :, None], w[None, :, :]].sum(axis=1)  # rows of X reused across columns
        shared.append((dy**2).sum())
        indep.append((_mc_iid(err, hx, hw, k, m * n, 1, rng) ** 2).sum())
    pred = an.gemm_distortion(mu, var, k, m, n).frob_sq
    assert np.mean(shared) == pytest.approx(pred, rel=0.05)
    assert np.std(shared) > np.std(indep)  # only the spread grows


def test_t7_relative_error_model():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 128, size=(12, 48)).astype(float)
    w = rng.normal(0, 30, size=(48, 10)).round()
    mu_r, sigma_r = -0.03, 0.05
    meas = []
    for _ in range(300):
        delta = rng.normal(mu_r, sigma_r, size=(12, 48, 10))
        dy = (x[:, :, None] * w[None, :, :] * delta).sum(axis=1)
        meas.append((dy**2).sum())
    assert np.mean(meas) == pytest.approx(an.relative_model_distortion(x, w, mu_r, sigma_r), rel=0.05)


def _field_sample(rng, n_fields=512, k=64):
    """Fields whose activations come from different local distributions (different ReLU scales)."""
    scales = rng.uniform(5, 60, size=n_fields)
    local = np.zeros((n_fields, 256))
    for i, s in enumerate(scales):
        h = np.where(VALUES >= 0, np.exp(-np.maximum(VALUES, 0) / s), 0.0)
        local[i] = h / h.sum()
    return local


def test_t11_p3_population_model():
    rng = np.random.default_rng(11)
    _, hw, _ = _dists()
    err = _trunc_table()
    k = 64
    local = _field_sample(rng, 512, k)
    sig, mean = est.predict_p3(local, hw, err[None], k)
    # MC: per field, draw K activations from its local histogram and K weights from p_w
    sums = []
    for i in range(local.shape[0]):
        x = _draw(rng, local[i], (100, k))
        w = _draw(rng, hw, (100, k))
        sums.append(err[x, w].sum(axis=1))
    sums = np.concatenate(sums)
    assert sig[0] == pytest.approx(sums.std(), rel=0.02)
    assert mean[0] == pytest.approx(sums.mean(), rel=0.02)
    # code form K·σ_agg with s_i = σ_i/√K equals the law-of-total-variance form
    hwn = hw / hw.sum()
    mu_i = local @ (err @ hwn)
    var_i = local @ ((err * err) @ hwn) - mu_i**2
    s_i = np.sqrt(var_i) / np.sqrt(k)
    n = len(mu_i)
    agg = np.sqrt(((mu_i**2 + s_i**2).sum() - mu_i.sum() ** 2 / n) / n)
    assert k * agg == pytest.approx(sig[0], rel=1e-9)
    # equal local histograms -> √K·σ_e
    same = np.repeat(local[:1], 20, axis=0)
    s_same, _ = est.predict_p3(same, hw, err[None], k)
    _, var_e = an.error_moments(err, local[0], hw)
    assert s_same[0] == pytest.approx(np.sqrt(k * var_e), rel=1e-9)


def test_p3_pools_spread_column_scales_with_the_variance_of_the_scales():
    """Var(sX) = E[s²]·Var X + Var(s)·(E X)² over output columns with float scales s: with a biased table
    (truncation errs low) and scales 0.2–2.0 the Var(s) term dominates; scaling σ by rms(s) alone (the
    old form) predicted about a third of the Monte Carlo std."""
    rng = np.random.default_rng(3)
    _, hw, _ = _dists()
    err = _trunc_table()
    k = 64
    local = _field_sample(rng, 256, k)
    scales = np.linspace(0.2, 2.0, 32)
    sig, mean = est.predict_p3(local, hw, err[None], k, col_scale=scales)
    sums = []  # MC: per field, 64 outputs, each of K fresh activations and weights, one column's scale
    for i in range(local.shape[0]):
        x = _draw(rng, local[i], (64, k))
        w = _draw(rng, hw, (64, k))
        sums.append(err[x, w].sum(axis=1) * rng.choice(scales, size=64))
    sums = np.concatenate(sums)
    assert sig[0] == pytest.approx(sums.std(), rel=0.03)
    assert mean[0] == pytest.approx(sums.mean(), rel=0.03)
    s_old, _ = est.predict_p3(local, hw, err[None], k, col_scale=np.sqrt(np.mean(scales**2)))
    assert s_old[0] < 0.6 * sums.std()  # the Var(s)·(E X)² term is most of it here


def test_p1_layer_rms_error_against_monte_carlo():
    """`layer_rms_error` (what `dse analyze` reports as P1): per-column weight histograms and float scales,
    a biased table and an unbiased one, against Monte Carlo of Σ_k ε(x_k, w_kn) with operands drawn from
    the same histograms."""
    rng = np.random.default_rng(17)
    hx, hw, _ = _dists()
    shifted = np.roll(hw, 20)  # a second column whose weights lean positive
    col_hists = np.stack([hw, shifted, 0.5 * (hw + shifted)]) * 1000  # counts: normalised inside
    col_scale = np.array([0.01, 0.02, 0.005])
    err = np.stack([_trunc_table(), _round_table(), np.zeros((256, 256))])
    k, entries = 128, 4000
    pred = an.layer_rms_error(err, hx, col_hists, k, col_scale)
    assert pred.shape == (3,) and pred[2] == 0.0  # the exact table: no error
    mse = np.zeros(3)
    for n in range(3):
        x = _draw(rng, hx, (entries, k))
        w = _draw(rng, col_hists[n] / col_hists[n].sum(), (entries, k))
        mse += ((err[:, x, w].sum(axis=2) * col_scale[n]) ** 2).mean(axis=1) / 3
    assert pred[:2] ** 2 == pytest.approx(mse[:2], rel=0.05)
    mu, var = an.column_moments(err, hx, col_hists)
    assert mu.shape == var.shape == (3, 3) and np.all(mu[2] == 0) and np.all(var[2] == 0)
    assert abs(mu[0]).min() > 5  # truncation: biased in every column, so the K² μ² term dominates


def test_t10_p2_mre():
    """T10: P2's MRE (Eq. 2) is 0 for an exact multiplier; one known error gives |ε|/max(1, ij)/n²; errors
    outside the operand range 0..n do not count."""
    from dse.multipliers.library import load_library

    lib = load_library()
    assert an.p2_mre(lib.get("exact_u8").error_table, signed=False) == 0.0
    assert an.p2_mre(lib.get("exact_s8").error_table, signed=True) == 0.0
    err = np.zeros((256, 256))
    err[3, 5] = -6.0  # 3·5 = 15
    err[0, 7] = 2.0  # product 0: divided by max(1, 0) = 1
    err[200, 200] = 1e6  # beyond n = 128: not in the sum
    assert an.p2_mre(err, signed=False) == pytest.approx((6 / 15 + 2) / 128**2)
    err[128, 128] = 128.0 * 128  # value 128 is in the unsigned sum, not representable signed
    assert an.p2_mre(err, signed=False) == pytest.approx((6 / 15 + 2 + 1) / 128**2)
    assert an.p2_mre(err, signed=True) == pytest.approx((6 / 15 + 2) / 128**2)
    trunc = lib.get("trunc8_u8")
    assert an.p2_mre(trunc.error_table, signed=False) > 0
