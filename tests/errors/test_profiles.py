"""Layer profiles on real approximate layers (signed and unsigned codes), the sampled predictor against
measurement on other inputs, and the AGN layer's noise (T12) — small hand-made models, no training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dse.errors import estimators as est
from dse.errors.profiles import compute_profiles, float_output
from dse.multipliers.core import Multiplier, operand_values
from dse.nn import approx_layers, calibrate, convert, set_mode
from dse.quant import QuantFormat


def _model(fmt: QuantFormat, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 36, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    )
    convert(m, fmt)
    x = torch.randn(256, 2, 6, 6)
    calibrate(m, [x[:128]])
    set_mode(m, "quant")
    m.eval()
    return m, x


def _trunc(signed, bits):
    v = operand_values(signed)
    p = np.outer(v, v)
    return Multiplier(f"t{bits}", signed, ((p >> bits) << bits).astype(np.int32), 0.5, "t")


ALL_FORMATS = pytest.mark.parametrize(  # every operand format
    "fmt",
    [
        QuantFormat(True, "symmetric", True),
        QuantFormat(False, "sign-magnitude", True),
        QuantFormat(False, "affine", True),
    ],
    ids=["signed", "unsigned-sm", "unsigned-affine"],
)


@ALL_FORMATS
def test_profile_histograms_are_byte_indexed_for_both_formats(fmt):
    model, x = _model(fmt)
    prof = compute_profiles(model, x[:64], rows_per_layer=64)
    layers = approx_layers(model)
    first = prof["0"]
    codes = layers["0"].input_codes(x[:64])
    a = layers["0"].gemm_operands(codes)[0][0]
    direct = np.bincount(a.numpy().astype(np.int64).ravel() & 0xFF, minlength=256)
    np.testing.assert_array_equal(first.hist_x, direct)
    if fmt.signed:  # negative inputs (no ReLU before the first conv) land in bins 128..255
        assert first.hist_x[128:].sum() > 0.2 * first.hist_x.sum()
    else:  # unsigned codes: the input of layer 3 follows a ReLU, so large codes fill the upper bins
        h = prof["3"].hist_x
        assert h[200:].sum() > 0 and h[0] > 0
        vals = layers["3"].input_codes(torch.relu(layers["0"](x[:64])).flatten(1)).numpy().ravel()
        np.testing.assert_array_equal(h, np.bincount(vals.astype(np.int64), minlength=256))
    w = layers["3"].weight_codes().numpy()
    np.testing.assert_array_equal(
        prof["3"].hist_w, np.bincount(w.astype(np.int64).ravel() & 0xFF, minlength=256)
    )
    assert prof["3"].rows.shape == (1, 64, 6 * 36) and prof["3"].weights.shape == (1, 216, 12)
    y = float_output(
        layers["3"].int_forward(layers["3"].input_codes(torch.relu(layers["0"](x[:64])).flatten(1))),
        layers["3"].output_scale,
    )
    assert prof["3"].output_std == pytest.approx(float(y.std(unbiased=False)), rel=1e-6)


@ALL_FORMATS
def test_sampled_prediction_matches_measurement_on_other_inputs(fmt):
    model, x = _model(fmt)
    prof = compute_profiles(model, x[:128], rows_per_layer=512)
    mult = _trunc(fmt.signed, 6)
    err = est.error_tables([mult], fmt.weight_scheme)
    layer = approx_layers(model)["0"]
    p = prof["0"]
    sig, mean = est.predict_sampled(p.rows[0], p.weights[0], err, p.col_scale)
    with torch.no_grad():
        codes = layer.input_codes(x[128:])  # images the profile never saw
        dy = float_output(
            layer.int_forward(codes, mult).long() - layer.int_forward(codes).long(), layer.output_scale
        )
    assert sig[0] == pytest.approx(float(dy.std()), rel=0.1)
    assert mean[0] == pytest.approx(float(dy.mean()), rel=0.1, abs=0.05 * float(dy.std()))


def test_t12_agn_layer_noise_only_in_training():
    model, x = _model(QuantFormat(False, "sign-magnitude", True))
    layer = approx_layers(model)["3"]
    with torch.no_grad():
        layer.agn_sigma.fill_(-0.3)  # the sign is irrelevant
    h = torch.relu(approx_layers(model)["0"](x)).flatten(1)
    set_mode(model, "quant")
    with torch.no_grad():
        y = layer(h) - layer.bias
    set_mode(model, "agn")
    layer.train()
    torch.manual_seed(0)
    with torch.no_grad():
        diffs = torch.cat([(layer(h) - layer.bias - y).ravel() for _ in range(20)])
    assert float(diffs.std() / y.std()) == pytest.approx(0.3, rel=0.05)
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(h) - layer.bias, y)
