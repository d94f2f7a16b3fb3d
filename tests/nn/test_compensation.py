"""dse.nn.compensation: bias compensation and weight tuning, against brute force on the calibration data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_nn import FORMATS, LAYERS, _make, _mult

from dse.multipliers.core import Multiplier, exact_table, operand_values
from dse.nn import approximated, calibrate_remedies, convert, set_mode
from dse.nn.compensation import (
    compensated_float_bias,
    remedies_of,
    split_variant,
    variant_name,
    weight_candidates,
    weight_map,
    with_remedies,
)
from dse.util import UserError


def _truncated(signed: bool, bits: int = 7) -> Multiplier:
    """A one-sided biased table: the product with its `bits` lowest bits cut (what truncation does)."""
    v = operand_values(signed)
    p = np.outer(v, v)
    lut = (p >> bits) << bits
    return Multiplier(f"cut{bits}_{signed}", signed, lut.astype(np.int32), 0.5, "test")


def _calibrated(kind: str, fmt_name: str, seed: int = 1):
    fmt = FORMATS[fmt_name]
    layer, x = _make(kind, fmt, True, "signed", seed=seed)
    set_mode(layer, "quant")
    calibrate_remedies(layer, x, batch_size=1)  # several batches: the counts add up
    return layer, x


@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_correction_equals_the_brute_force_mean_error_per_channel(fmt_name, kind):
    layer, x = _calibrated(kind, fmt_name)
    fmt = FORMATS[fmt_name]
    codes = layer.input_codes(x)
    for mult in (_mult(fmt.signed, seed=0), _truncated(fmt.signed)):
        err = (layer.int_forward(codes, mult) - layer.int_forward(codes)).to(torch.float64)
        dims = [0] + list(range(2, err.dim())) if kind != "linear" else list(range(err.dim() - 1))
        brute = err.mean(dim=dims)
        c = layer.expected_acc_error(mult)
        assert brute.abs().max() > 1  # the table is biased at this layer
        assert torch.allclose(c, brute, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize("kind", ["conv_stride_pad", "linear"])
def test_compensated_layer_has_zero_mean_error_and_its_float_bias_matches_the_correction(fmt_name, kind):
    layer, x = _calibrated(kind, fmt_name)
    fmt = FORMATS[fmt_name]
    mult = _truncated(fmt.signed)
    codes = layer.input_codes(x)
    exact = layer.int_forward(codes)
    plain = layer.int_forward(codes, mult)
    comp = layer.int_forward(codes, mult, remedy="bias")
    dims = [0] + list(range(2, exact.dim())) if kind != "linear" else list(range(exact.dim() - 1))
    mean_plain = (plain - exact).double().mean(dim=dims)
    mean_comp = (comp - exact).double().mean(dim=dims)
    assert mean_comp.abs().max() <= 0.5 + 1e-9  # only the rounding of the integer correction is left
    assert mean_comp.abs().max() < mean_plain.abs().max()
    corr = layer.bias_correction(mult)
    assert torch.equal((plain - comp).amin(dim=dims).long(), corr)  # an exact integer per channel
    # in lut mode the correction goes through the bias: float output == acc·scale + compensated float bias
    with approximated(layer, {layer.name: mult}, {layer.name: "bias"}):
        y = layer(x)
    fbias = compensated_float_bias(layer.bias, corr, layer.output_scale)
    view = (1, -1, 1, 1) if kind != "linear" else (-1,)
    ref = plain.double() * layer.output_scale.double().view(view) + fbias.view(view)
    assert torch.allclose(y.double(), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    assert layer.remedy is None  # restored


@pytest.mark.parametrize("fmt_name", list(FORMATS))
def test_weight_map_minimises_the_expected_error_and_is_identity_for_exact(fmt_name):
    fmt = FORMATS[fmt_name]
    rng = np.random.default_rng(0)
    hist = rng.integers(0, 50, size=256).astype(np.float64)
    exact = Multiplier("ex", fmt.signed, exact_table(fmt.signed), 1.0, "test")
    assert np.array_equal(weight_map(exact, hist, fmt), np.arange(256))
    mult = _truncated(fmt.signed, bits=8)
    wmap = weight_map(mult, hist, fmt)
    vals = operand_values(fmt.signed).astype(np.float64)
    p = hist / hist.sum()

    def cost(w: int, w2: int) -> float:
        return float((p * np.abs(vals * vals[w] - mult.lut[:, w2])).sum())

    changed = [w for w in range(256) if wmap[w] != w]
    assert changed  # a biased table gains from remapping
    for w in range(0, 256, 7):
        assert cost(w, int(wmap[w])) <= cost(w, w) + 1e-12
    allowed = set(weight_candidates(fmt).tolist())  # codes the format's weights can take
    assert all(int(wmap[w]) in allowed for w in allowed)
    assert all(wmap[w] == w for w in range(256) if w not in allowed)


def test_weight_tuned_layer_runs_the_remapped_table_and_lowers_the_error():
    layer, x = _calibrated("conv_stride_pad", "sign-magnitude")
    mult = _truncated(False, bits=8)
    codes = layer.input_codes(x)
    exact = layer.int_forward(codes).double()
    plain = layer.int_forward(codes, mult).double()
    tuned = layer.int_forward(codes, mult, remedy="weights").double()
    wmap = layer.weight_map(mult)
    remapped = Multiplier("remap", False, mult.lut[:, wmap], 0.5, "test")
    assert torch.equal(tuned, layer.int_forward(codes, remapped).double())
    assert ((tuned - exact).abs().mean()) < ((plain - exact).abs().mean())


def test_remedy_without_calibration_is_a_one_line_error():
    fmt = FORMATS["signed"]
    layer, x = _make("linear", fmt, True, "signed")
    with pytest.raises(UserError, match="calibration"):
        with approximated(layer, {layer.name: _mult(True)}, {layer.name: "bias"}):
            pass


def test_variant_names_round_trip_and_choices_follow_the_options():
    assert split_variant("trunc4_u8+bc") == ("trunc4_u8", "bias")
    assert split_variant("trunc4_u8+wt") == ("trunc4_u8", "weights")
    assert split_variant("trunc4_u8") == ("trunc4_u8", None)
    assert variant_name("a", "bias") == "a+bc"
    assert remedies_of({"l1": "a+bc", "l2": "b"}) == ({"l1": "a", "l2": "b"}, {"l1": "bias"})
    ex = {"exact_u8"}
    assert with_remedies(["exact_u8", "a"], ex, True, False) == ["exact_u8", "a+bc"]
    assert with_remedies(["exact_u8", "a"], ex, "search", False) == ["exact_u8", "a", "a+bc"]
    assert with_remedies(["a"], ex, False, True) == ["a", "a+wt"]
    assert with_remedies(["a"], ex, False, False) == ["a"]


def test_calibration_histograms_count_padding_as_the_zero_point_code():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    layer = convert(conv, FORMATS["affine"])
    x = torch.randn(2, 1, 4, 4)  # negative inputs: shifted encoding, zero point > 0
    from dse.nn import calibrate

    calibrate(layer, [x])
    set_mode(layer, "quant")
    calibrate_remedies(layer, x)
    hist = layer.calibration
    assert hist is not None and hist.shape == (1, 9, 256)
    assert torch.all(hist.sum(dim=2) == 2 * 16)  # every row: one code per image and output position
    z = layer.pad_code
    assert z > 0
    # the corner tap (k = 0) sees padding on the first row and column: 7 of 16 positions per image
    assert hist[0, 0, z] >= 2 * 7


@pytest.mark.parametrize("remedy", [None, "bias", "weights"])
def test_kernel_backends_name_the_remedied_kernel_that_ran(remedy):
    layer, x = _calibrated("linear", "sign-magnitude")
    mult = _truncated(FORMATS["sign-magnitude"].signed)
    with approximated(layer, {layer.name: mult}, {layer.name: remedy} if remedy else None):
        layer(x)
        assert layer.kernel_backends()  # `dse bench` reports them; a remedied layer read none before
