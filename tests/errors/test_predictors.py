"""σ predictors, histograms, mapping (T14), regulariser (T13) and energy (T15) with synthetic tables."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dse.kernels.reference import approx_matmul_reference

from dse.agn import agn_regulariser, check_agn_settings
from dse.energy import energy_rel, mac_shares
from dse.errors import estimators as est
from dse.errors.mapping import map_assignment
from dse.multipliers.core import Multiplier, exact_table, operand_values
from dse.util import UserError


def _mult(name, signed, fn, energy):
    v = operand_values(signed)
    p = np.outer(v, v)
    return Multiplier(name, signed, fn(p).astype(np.int32), energy, "test")


def _unsigned_library():
    return [
        _mult("exact", False, lambda p: p, 1.0),
        _mult("trunc4", False, lambda p: (p >> 4) << 4, 0.7),
        _mult("trunc6", False, lambda p: (p >> 6) << 6, 0.5),
        _mult("round6", False, lambda p: np.round(p / 64) * 64, 0.55),
    ]


def test_histograms_signed_and_unsigned_by_byte():
    u = np.array([0, 200, 200, 255], dtype=np.uint8)
    h = est.byte_histogram(u)
    assert h[200] == 2 and h[255] == 1 and h[0] == 1 and h[72] == 0  # no 128 shift for unsigned codes
    s = np.array([-56, -56, -1, 0, 127], dtype=np.int8)
    hs = est.byte_histogram(s)
    assert hs[200] == 2 and hs[255] == 1 and hs[0] == 1 and hs[127] == 1
    rows = np.array([[200, 0, 200], [1, 1, 1]], dtype=np.uint8)
    rh = est.row_histograms(rows)
    assert rh[0, 200] == pytest.approx(2 / 3) and rh[1, 1] == 1.0


@pytest.mark.parametrize("scheme", ["symmetric", "sign-magnitude", "affine"])
def test_sampled_errors_match_the_reference_kernel(scheme):
    rng = np.random.default_rng(0)
    signed = scheme == "symmetric"
    lib = [
        _mult("t", signed, lambda p: (p >> 5) << 5, 0.5),
        _mult("r", signed, lambda p: np.round(p / 48) * 48, 0.6),
    ]
    if scheme == "symmetric":
        a = rng.integers(-128, 128, (40, 30)).astype(np.int8)
        b = rng.integers(-128, 128, (30, 7)).astype(np.int8)
    elif scheme == "sign-magnitude":
        a = rng.integers(0, 256, (40, 30)).astype(np.uint8)
        b = rng.integers(-127, 128, (30, 7)).astype(np.int8)
    else:
        a = rng.integers(0, 256, (40, 30)).astype(np.uint8)
        b = rng.integers(0, 256, (30, 7)).astype(np.uint8)
    err = est.error_tables(lib, scheme)
    exact_eff = est.exact_effective_table(signed, scheme)
    got = est.sampled_errors(a, b, err)
    at, bt = torch.as_tensor(a.astype(np.int64)), torch.as_tensor(b.astype(np.int64))
    exact = approx_matmul_reference(at, bt, torch.as_tensor(exact_eff.astype(np.int32))).numpy()
    for m in range(len(lib)):
        eff = (err[m] + exact_eff).astype(np.int32)
        approx = approx_matmul_reference(at, bt, torch.as_tensor(eff)).numpy()
        np.testing.assert_array_equal(got[m], approx.astype(np.int64) - exact)
    scale = rng.uniform(0.5, 2, 7)
    sig, mean = est.predict_sampled(a, b, err, scale)
    e0 = (got[0] * scale[None, :]).ravel()
    assert sig[0] == pytest.approx(e0.std(), rel=1e-5) and mean[0] == pytest.approx(e0.mean(), rel=1e-5)


def test_sign_magnitude_table_folds_the_weight_sign():
    lib = _unsigned_library()
    err = est.error_tables(lib, "sign-magnitude")
    e = lib[2].error_table
    assert err[2, 30, 5] == e[30, 5]
    assert err[2, 30, (-5) & 0xFF] == -e[30, 5]
    assert err[2, 30, 0] == 0
    exact_eff = est.exact_effective_table(False, "sign-magnitude")
    assert exact_eff[30, (-5) & 0xFF] == -150 and exact_eff[30, 5] == 150
    with pytest.raises(ValueError):
        est.error_tables([_mult("s", True, lambda p: p, 1.0)], "sign-magnitude")


def test_predictors_agree_on_iid_data_and_weight_aware_sees_column_bias():
    rng = np.random.default_rng(1)
    lib = _unsigned_library()
    err = est.error_tables(lib, "sign-magnitude")
    k, n = 64, 16
    rows = rng.integers(0, 256, (512, k)) * (rng.random((512, k)) < 0.6)
    # columns of mostly one sign: the per-column bias Σ sign(w)·μ(|w|) does not average away
    signs = np.where(np.arange(n) < n // 2, 1, -1)
    w = (rng.integers(1, 128, (k, n)) * np.where(rng.random((k, n)) < 0.85, signs, -signs)).astype(np.int8)
    s_samp, m_samp = est.predict_sampled(rows, w, err)
    hists = est.row_histograms(rows)
    col_h = np.stack([est.byte_histogram(w[:, j]) for j in range(n)])
    s_wa, m_wa = est.predict_weight_aware(hists, col_h, err, k)
    s_p3, m_p3 = est.predict_p3(hists, est.byte_histogram(w), err, k)
    assert s_samp[0] == 0 and s_wa[0] == 0 and s_p3[0] == 0
    for m in (1, 2):
        assert s_wa[m] == pytest.approx(s_samp[m], rel=0.15)  # weight-aware ≈ sampled
        assert s_p3[m] < 0.7 * s_samp[m]  # the global weight histogram averages the column bias away
        assert m_wa[m] == pytest.approx(m_samp[m], rel=0.05, abs=0.05 * s_samp[m])


def _preds(sigma, mean, names, layers=("l0",)):
    return SimpleNamespace(
        layers=list(layers), multipliers=list(names), sigma=np.atleast_2d(sigma), mean=np.atleast_2d(mean)
    )


def test_t14_mapping_monotone_minimal_and_order_invariant():
    rng = np.random.default_rng(14)
    names = [f"m{i}" for i in range(12)]
    energies = dict(zip(names, np.r_[1.0, rng.uniform(0.1, 0.99, 11)]))
    sigma = np.r_[0.0, rng.uniform(0.01, 2.0, 11)]
    mean = np.r_[0.0, rng.normal(0, 1.0, 11)]
    for rule in ("sigma", "bias-aware"):
        pred = _preds(sigma, mean, names)
        last = np.inf
        for tol in np.linspace(0, 3, 61):
            chosen = map_assignment(pred, {"l0": tol}, energies, rule)["l0"]
            e = energies[chosen]
            assert e <= last + 1e-12  # larger tolerance never costs more energy
            last = e
            q = sigma if rule == "sigma" else np.sqrt(sigma**2 + mean**2)
            feasible = [names[i] for i in range(12) if q[i] <= tol]
            assert chosen in feasible
            assert e == min(energies[f] for f in feasible)  # the minimum-energy feasible one
            perm = rng.permutation(12)
            pred_p = _preds(sigma[perm], mean[perm], [names[i] for i in perm])
            assert map_assignment(pred_p, {"l0": tol}, energies, rule)["l0"] == chosen
        assert map_assignment(pred, {"l0": 0.0}, energies, rule)["l0"] == "m0"  # σ_l = 0: exact only
    # bias-aware never picks a multiplier whose bias alone exceeds the tolerance; sigma-only may
    pred = _preds([0.0, 0.1], [0.0, 5.0], ["exact", "biased"])
    en = {"exact": 1.0, "biased": 0.2}
    assert map_assignment(pred, {"l0": 1.0}, en, "sigma")["l0"] == "biased"
    assert map_assignment(pred, {"l0": 1.0}, en, "bias-aware")["l0"] == "exact"


def test_t13_regulariser_gradient():
    shares = [0.6, 0.3, 0.1]
    sig = [
        torch.tensor(0.2, requires_grad=True),
        torch.tensor(-0.1, requires_grad=True),
        torch.tensor(0.9, requires_grad=True),
    ]
    lam, smax = 0.4, 0.5
    reg = agn_regulariser(sig, shares, lam, smax)
    assert float(reg.detach()) == pytest.approx(-lam * (0.6 * 0.2 + 0.3 * 0.1 + 0.1 * 0.5))
    reg.backward()
    assert float(sig[0].grad) == pytest.approx(-lam * 0.6)
    assert float(sig[1].grad) == pytest.approx(+lam * 0.3)  # sign(σ) < 0
    assert float(sig[2].grad) == 0.0  # above σ_max
    check_agn_settings([0.0, 0.2], 0.5)
    for bad in (([-0.1], 0.5), ([0.2], 0.0), ([0.2], -1.0), ([], 0.5)):
        with pytest.raises(UserError):
            check_agn_settings(*bad)


def test_t15_energy():
    macs = {"a": 100, "b": 300, "c": 600}
    assert energy_rel(macs, {k: 1.0 for k in macs}) == pytest.approx(1.0)
    for p in (0.2, 0.73):
        assert energy_rel(macs, {k: p for k in macs}) == pytest.approx(p)
        assert energy_rel({"a": 1, "b": 5}, {"a": p, "b": p}) == pytest.approx(p)
    e = {"a": 0.2, "b": 0.5, "c": 0.9}
    shares = mac_shares(macs)
    assert energy_rel(macs, e) == pytest.approx(sum(shares[k] * e[k] for k in macs))


def test_exact_table_has_zero_error_in_every_scheme():
    for signed, scheme in ((True, "symmetric"), (False, "sign-magnitude"), (False, "affine")):
        m = Multiplier("x", signed, exact_table(signed), 1.0, "t")
        assert not est.error_tables([m], scheme).any()


def test_low_rank_path_agrees_with_the_exact_bag():
    rng = np.random.default_rng(3)
    lib = _unsigned_library()
    err = est.error_tables(lib, "sign-magnitude")
    factors = est.factorize(err)
    assert factors[0][0].shape[1] == 0 and factors[1] is not None  # exact: rank 0
    rows = rng.integers(0, 256, (64, 100))
    w = rng.integers(-127, 128, (100, 90))  # K·N·256 above LOWRANK_MIN_TABLE: the GEMM path runs
    assert 100 * 90 * 256 > est.LOWRANK_MIN_TABLE
    fast = est.sampled_errors(rows, w, err, factors)
    exact = est.sampled_errors(rows, w, err)
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    assert est.factorize(np.random.default_rng(0).normal(size=(1, 256, 256)))[0] is None  # full rank


def test_predictions_json_reads_back_without_torch(tmp_path):
    """profiles/predictions.json ({predictor: {key, table}}) loads into the same Predictions, torch absent."""
    import json
    import subprocess
    import sys

    from dse.errors.predict import Predictions
    from dse.util import atomic_write_json

    pred = Predictions(
        layers=["conv1", "fc1"],
        multipliers=["exact_u8", "trunc6_u8", "bam_h2_v6_u8"],
        sigma=np.array([[0.0, 0.25, 0.5], [0.0, 1.5, 3.25]]),
        mean=np.array([[0.0, -0.125, 0.0625], [0.0, 2.0, -1.0]]),
        output_std=np.array([1.5, 4.0]),
        output_rms=np.array([1.75, 4.5]),
        energies=np.array([1.0, 0.6, 0.4]),
        macs=np.array([1000.0, 200.0]),
        predictor="sampled",
        seconds=0.5,
    )
    path = tmp_path / "predictions.json"
    atomic_write_json(path, {"sampled": {"key": "k", **pred.to_json()}})
    back = Predictions.from_json(json.loads(path.read_text())["sampled"])
    assert back.layers == pred.layers and back.multipliers == pred.multipliers
    for name in ("sigma", "mean", "output_std", "output_rms", "energies", "macs"):
        np.testing.assert_array_equal(getattr(back, name), getattr(pred, name))
    np.testing.assert_array_equal(back.relative_distortion, pred.relative_distortion)
    code = (
        "import json, sys; sys.modules['torch'] = None\n"
        "from dse.errors.predict import Predictions\n"
        f"p = Predictions.from_json(json.load(open({str(path)!r}))['sampled'])\n"
        "print(p.sigma[1, 2], p.multipliers[2])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3.25", "bam_h2_v6_u8"]
