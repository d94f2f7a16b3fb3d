"""dse.quant: operand formats, effective tables, quantizers and observers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dse.multipliers.core import Multiplier, exact_table
from dse.quant import ActivationQuantizer, QuantFormat, effective_lut, quantize_codes, quantize_weight
from dse.util import UserError

SIGNED = QuantFormat.from_names("signed", "symmetric")
SM = QuantFormat.from_names("unsigned", "sign-magnitude")
AFFINE = QuantFormat.from_names("unsigned", "affine")


def _random_mult(signed: bool, seed: int = 0) -> Multiplier:
    rng = np.random.default_rng(seed)
    lut = exact_table(signed) + rng.integers(-300, 300, size=(256, 256)).astype(np.int32)
    return Multiplier(f"rand{seed}", signed, lut, 0.5, "test")


def test_from_names_and_bad_formats():
    assert QuantFormat.from_names("unsigned") == QuantFormat(False, "sign-magnitude", True)
    assert QuantFormat.from_names("signed", per_channel=False).per_channel is False
    with pytest.raises(UserError, match="format"):
        QuantFormat.from_names("int8")
    with pytest.raises(UserError, match="weight_scheme"):
        QuantFormat.from_names("signed", "affine")
    with pytest.raises(UserError, match="weight_scheme"):
        QuantFormat.from_names("unsigned", "symmetric")


def test_effective_lut_sign_magnitude_applies_the_weight_sign_to_the_unsigned_table():
    m = _random_mult(signed=False)
    t = effective_lut(m, SM)
    assert t.dtype == torch.int32 and t.shape == (256, 256)
    for w in (-127, -5, -1, 0, 1, 77, 127):
        for a in (0, 3, 200, 255):
            assert int(t[a, w & 0xFF]) == int(np.sign(w)) * int(m.lut[a, abs(w)])


def test_effective_lut_signed_and_affine_are_the_table_itself():
    ms, mu = _random_mult(True, 1), _random_mult(False, 2)
    assert torch.equal(effective_lut(ms, SIGNED), torch.tensor(ms.lut))
    assert torch.equal(effective_lut(mu, AFFINE), torch.tensor(mu.lut))


def test_effective_lut_rejects_a_multiplier_of_the_other_signedness():
    with pytest.raises(UserError, match="unsigned"):
        effective_lut(_random_mult(False), SIGNED)
    with pytest.raises(UserError, match="signed"):
        effective_lut(_random_mult(True), SM)


@pytest.mark.parametrize("fmt", [SIGNED, SM, AFFINE])
@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_codes_in_range_and_reconstruct_within_half_a_step(fmt, per_channel):
    fmt = QuantFormat(fmt.signed, fmt.weight_scheme, per_channel)
    w = torch.randn(6, 4, 3, 3) * torch.linspace(0.1, 2, 6).view(-1, 1, 1, 1)
    codes, scale, zp = quantize_weight(w, fmt)
    lo, hi = fmt.weight_range
    assert codes.min() >= lo and codes.max() <= hi and torch.equal(codes, codes.round())
    if not per_channel:
        assert torch.all(scale == scale[0])
    if fmt.weight_scheme != "affine":
        assert torch.all(zp == 0)
    recon = (codes - zp.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1)
    assert torch.all((recon - w).abs() <= scale.view(-1, 1, 1, 1) / 2 + 1e-6)


def test_quantize_codes_has_a_straight_through_gradient_inside_the_range_only():
    x = torch.tensor([-3.0, 0.2, 1.4, 30.0], requires_grad=True)
    q = quantize_codes(x, torch.tensor(0.1), torch.tensor(0.0), 0, 255)
    q.sum().backward()
    assert q.tolist() == [0.0, 2.0, 14.0, 255.0]
    assert x.grad.tolist() == [0.0, 10.0, 10.0, 0.0]


def test_observer_calibration_min_max_then_ema_and_rules():
    aq = ActivationQuantizer(SM)
    aq.calibrating = True
    aq.observe(torch.tensor([0.0, 2.0]))
    aq.observe(torch.tensor([0.5, 4.0]))
    assert float(aq.running_min) == 0.0 and float(aq.running_max) == 4.0
    assert aq.rule == "relu"
    scale, zp = aq.qparams()
    assert float(zp) == 0 and float(scale) == pytest.approx(4.0 / 255)
    aq.calibrating = False
    aq.observe(torch.tensor([-1.0, 4.0]))  # EMA step: min moves 1 % towards -1
    assert float(aq.running_min) == pytest.approx(-0.01)
    assert aq.rule == "shifted"
    assert ActivationQuantizer(SIGNED).rule == "symmetric"


def test_percentile_calibration_saturates_outliers_but_keeps_the_relu_rule():
    import torch.nn as nn

    from dse.nn import calibrate, convert

    x = torch.relu(torch.randn(4000, 8))
    x[0, 0] = 100.0  # one outlier
    full = calibrate(convert(nn.Linear(8, 2), SM), [x])
    pct = calibrate(convert(nn.Linear(8, 2), SM), [x], percentile=99.9)
    assert float(full.act_quant.running_max) == 100.0
    assert 2.0 < float(pct.act_quant.running_max) < 5.0
    assert pct.act_rule == "relu" and float(pct.act_quant.running_min) == 0.0
    with pytest.raises(UserError, match="percentile"):
        calibrate(convert(nn.Linear(8, 2), SM), [x], percentile=10)
