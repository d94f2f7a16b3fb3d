"""dse.nn: approximate layers, convert(), integer equivalence of table and quant modes, AGN, QAT, state."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dse.multipliers.core import Multiplier, exact_table
from dse.nn import (
    ApproxConv2d,
    ApproxLayer,
    ApproxLinear,
    Mode,
    approx_layers,
    approximated,
    assign,
    calibrate,
    convert,
    layer_infos,
    negative_clipping,
    set_mode,
)
from dse.quant import QuantFormat
from dse.util import UserError

FORMATS = {
    "signed": QuantFormat.from_names("signed", "symmetric"),
    "sign-magnitude": QuantFormat.from_names("unsigned", "sign-magnitude"),
    "affine": QuantFormat.from_names("unsigned", "affine"),
}


@functools.cache  # one table per format: the kernels factorise each new table once
def _mult(signed: bool, exact: bool = False, seed: int = 0) -> Multiplier:
    lut = exact_table(signed)
    if not exact:
        rng = np.random.default_rng(seed)
        lut = lut + rng.integers(-500, 700, size=(256, 256)).astype(np.int32)  # biased, asymmetric
    return Multiplier(f"{'exact' if exact else 'rand'}_{signed}", signed, lut, 1.0 if exact else 0.4, "test")


# ------------------------------------------------------------------------------- independent int64 reference


def _operands(layer: ApproxLayer, codes: torch.Tensor, z_a: int):
    """(A [G, N, L, K], B [G, K, n_out]) as int64 operand values, padding with the code of real zero."""
    w = layer.weight_codes().to(torch.int64)
    if isinstance(layer, ApproxLinear):
        a = codes.reshape(-1, codes.shape[-1]).to(torch.int64)
        return a[None, :, None, :], w.t()[None], codes.shape[:-1]
    x = codes.to(torch.float64)
    ph, pw = layer.padding
    x = F.pad(x, (pw, pw, ph, ph), value=float(z_a))
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, stride=layer.stride).round().long()
    g, k, n_out = layer.groups, layer.fan_in, layer.out_channels // layer.groups
    a = torch.stack([cols[:, i * k : (i + 1) * k, :].permute(0, 2, 1) for i in range(g)])  # [G, N, L, K]
    b = torch.stack([w[i * n_out : (i + 1) * n_out].reshape(n_out, k).t() for i in range(g)])  # [G, K, n_out]
    return a, b, None


def reference_acc(layer: ApproxLayer, codes: torch.Tensor, mult: Multiplier | None) -> torch.Tensor:
    """Σ_k (q_a − z_a)(q_w − z_w) exactly, or, with a table, Σ_k m̃(q_a, q_w) minus the zero-point terms,
    written out from the definitions (sign-magnitude: sign(w)·lut[a, |w|]) without dse's effective tables."""
    z_a = layer.pad_code
    z_w = layer._qstate(codes.device).z_w.to(torch.int64)  # [C_out]
    a, b, lead = _operands(layer, codes, z_a)
    g, n, ell, k = a.shape
    n_out = b.shape[-1]
    zw = z_w.view(g, 1, 1, n_out)
    if mult is None:
        acc = torch.einsum("gnlk,gko->gnlo", a - z_a, b[:, :, :] * 1) - zw * (a - z_a).sum(-1, keepdim=True)
    else:
        lut = torch.from_numpy(mult.lut.astype(np.int64))
        ia = a[..., :, None] & 0xFF  # [G, N, L, K, 1]
        if layer.fmt.weight_scheme == "sign-magnitude":
            prod = torch.sign(b)[:, None, None] * lut[ia, b.abs()[:, None, None]]
        else:
            prod = lut[ia, (b & 0xFF)[:, None, None]]
        acc = prod.sum(dim=3) - zw * a.sum(-1, keepdim=True) - z_a * b.sum(1)[:, None, None] + k * z_a * zw
    if isinstance(layer, ApproxLinear):
        return acc[0, :, 0, :].reshape(*lead, n_out)
    out = acc.permute(1, 0, 3, 2).reshape(n, g * n_out, ell)  # [N, C_out, L]
    return out


LAYERS = {
    "conv_stride_pad": (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (2, 3, 7, 7)),
    "grouped_dilated": (lambda: nn.Conv2d(4, 6, 3, padding=1, dilation=2, groups=2), (2, 4, 7, 7)),
    "depthwise": (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), (2, 4, 5, 5)),
    "linear": (lambda: nn.Linear(12, 5), (3, 12)),
}


def _make(kind: str, fmt: QuantFormat, per_channel: bool, inputs: str, seed: int = 0):
    torch.manual_seed(seed)
    make, shape = LAYERS[kind]
    module = make()
    with torch.no_grad():  # asymmetric per-channel weight ranges -> non-zero affine weight zero points
        module.weight.add_(
            torch.linspace(-0.3, 0.3, module.weight.shape[0]).view(-1, *[1] * (module.weight.dim() - 1))
        )
    layer = convert(module, QuantFormat(fmt.signed, fmt.weight_scheme, per_channel))
    x = torch.randn(*shape)
    if inputs == "relu":
        x = torch.relu(x)
    calibrate(layer, [x])
    return layer, x


@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("inputs", ["relu", "signed"])
def test_exact_table_lut_mode_equals_quant_mode_bit_for_bit(fmt_name, per_channel, kind, inputs):
    fmt = FORMATS[fmt_name]
    layer, x = _make(kind, fmt, per_channel, inputs)
    if not fmt.signed and inputs == "signed":
        assert layer.act_rule == "shifted" and layer.pad_code > 0  # non-zero activation zero point
    if fmt.weight_scheme == "affine":
        assert layer._qstate(x.device).z_w.abs().sum() > 0  # non-zero weight zero points
    codes = layer.input_codes(x)
    acc_quant = layer.int_forward(codes)
    ref = reference_acc(layer, codes, None)
    assert torch.equal(acc_quant.reshape(ref.shape).to(torch.int64), ref)
    assert torch.equal(layer.int_forward(codes, _mult(fmt.signed, exact=True)), acc_quant)

    set_mode(layer, "quant")
    y_quant = layer(x)
    expected = layer.dequantize_acc(acc_quant)
    if layer.bias is not None:
        expected = expected + (layer.bias.view(1, -1, 1, 1) if layer.kind == "conv" else layer.bias)
    assert torch.equal(y_quant, expected)  # quant mode = integer accumulator × scale + bias
    set_mode(layer, "lut")
    assert torch.equal(layer(x), y_quant)  # exact table through the kernel: same floats


@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_approximate_table_matches_the_definition_with_zero_point_terms(fmt_name, kind):
    fmt = FORMATS[fmt_name]
    layer, x = _make(kind, fmt, True, "signed", seed=1)
    mult = _mult(fmt.signed, seed=0)
    codes = layer.input_codes(x)
    acc = layer.int_forward(codes, mult)
    ref = reference_acc(layer, codes, mult)
    assert torch.equal(acc.reshape(ref.shape).to(torch.int64), ref)
    assert not torch.equal(acc, layer.int_forward(codes))  # the table's error shows
    assign(layer, {layer.name: mult})
    set_mode(layer, "lut")
    y = layer(x)
    bias = 0 if layer.bias is None else (layer.bias.view(1, -1, 1, 1) if kind != "linear" else layer.bias)
    assert torch.equal(y, layer.dequantize_acc(acc) + bias)


def test_quantized_output_is_close_to_float():
    for fmt in FORMATS.values():
        layer, x = _make("conv_stride_pad", fmt, True, "signed")
        y_float = layer(x)
        set_mode(layer, "quant")
        y_quant = layer(x)
        assert (y_quant - y_float).abs().max() < 0.05 * y_float.abs().max()


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
        )

    def forward(self, x):
        return torch.relu(self.seq(x))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Inner()
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.block(x).flatten(1))


def test_convert_nested_modules_names_shares_parameters_and_keeps_float_outputs():
    torch.manual_seed(0)
    model = Outer()
    x = torch.randn(2, 1, 6, 6)
    y0 = model(x)
    params = {n: p for n, p in model.named_parameters()}
    assert convert(model, FORMATS["sign-magnitude"]) is model
    layers = approx_layers(model)
    assert list(layers) == ["block.seq.0", "block.seq.2.0", "head"]
    assert isinstance(layers["block.seq.0"], ApproxConv2d) and isinstance(layers["head"], ApproxLinear)
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    for n, p in model.named_parameters():
        if n in params:
            assert p is params[n]  # an optimizer built before convert keeps working
    assert torch.equal(model(x), y0)  # float mode = the original network
    convert(model, FORMATS["sign-magnitude"])  # idempotent
    assert list(approx_layers(model)) == list(layers)
    infos = {i.name: i for i in layer_infos(model)}
    assert infos["block.seq.0"].macs == 3 * 3 * 6 * 6 * 1 * 4
    assert infos["block.seq.2.0"].macs == 3 * 3 * 4 * 4 * 2 * 4 and infos["block.seq.2.0"].fan_in == 18
    assert infos["head"].macs == 64 * 3 and infos["head"].fan_in == 64
    assert infos["block.seq.2.0"].groups == 2


def test_linear_macs_count_middle_dimensions():
    layer = convert(nn.Linear(8, 4), FORMATS["signed"])
    layer(torch.randn(2, 5, 8))
    assert layer.macs == 5 * 8 * 4


def test_agn_adds_noise_of_the_learned_relative_std_in_training_only():
    torch.manual_seed(0)
    layer = convert(nn.Linear(64, 256), FORMATS["sign-magnitude"])
    x = torch.relu(torch.randn(256, 64))
    calibrate(layer, [x])
    set_mode(layer, "quant")
    layer.eval()
    with torch.no_grad():
        y_clean = layer(x)
        layer.agn_sigma.fill_(-0.3)  # the sign of σ does not matter
    set_mode(layer, "agn")
    assert torch.equal(layer(x), y_clean)  # eval: no noise
    layer.train()
    layer.freeze_ranges = True
    y_noisy = layer(x)
    bias_free = y_clean - layer.bias.detach()
    ratio = float((y_noisy.detach() - y_clean).std() / bias_free.std())
    assert ratio == pytest.approx(0.3, rel=0.05)
    y_noisy.pow(2).mean().backward()
    assert layer.agn_sigma.grad is not None and layer.agn_sigma.grad != 0  # σ_l is learned


def test_errmodel_xi_is_added_to_the_quant_output():
    layer = convert(nn.Linear(6, 3), FORMATS["signed"])
    x = torch.randn(4, 6)
    calibrate(layer, [x])
    set_mode(layer, "quant")
    y = layer(x)

    class Relative(nn.Module):
        def forward(self, y):
            return 0.5 * y + 0.25

    layer.errmodel = Relative()
    assert torch.equal(layer(x), y)  # quant mode ignores it
    set_mode(layer, "errmodel")
    pre_bias = y - layer.bias
    assert torch.allclose(
        layer(x), pre_bias + (0.5 * pre_bias + 0.25) + layer.bias, atol=1e-6
    )  # ξ(y before bias)


@pytest.mark.parametrize("fmt_name", list(FORMATS))
def test_qat_gradients_flow_straight_through_and_lut_mode_uses_the_exact_gradient(fmt_name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    convert(model, FORMATS[fmt_name])
    x = torch.randn(4, 2, 5, 5, requires_grad=True)
    calibrate(model, [x.detach()])
    for layer in approx_layers(model).values():
        layer.freeze_ranges = True
    set_mode(model, "quant")
    y_train = model(x)
    with torch.no_grad():
        assert torch.equal(y_train.detach(), model(x))  # QAT trains the very model that is measured
    y_train.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    gx = x.grad.clone()
    assert grads["0.weight"].abs().sum() > 0 and grads["3.weight"].abs().sum() > 0 and gx.abs().sum() > 0

    # the weight gradient of layer 3 is that of a float linear layer on the fake-quantized operands
    conv, head = model[0], model[3]
    with torch.no_grad():
        h = torch.relu(conv(x)).flatten(1)
        hq = (head.input_codes(h).float() - head.pad_code) * head._qstate(h.device).s_a
        st = head._qstate(h.device)
        w_hat = st.wc * (st.out_scale / st.s_a).view(-1, 1)
    w_ste = head.weight + (w_hat - head.weight).detach()
    F.linear(hq, w_ste, head.bias).square().sum().backward()
    assert torch.allclose(head.weight.grad - grads["3.weight"], grads["3.weight"], rtol=1e-3, atol=1e-3)

    # lut mode with an approximate table: different outputs, the exact product's gradient (STE)
    model.zero_grad()
    x.grad = None
    assign(model, {"0": _mult(FORMATS[fmt_name].signed, seed=0)})
    set_mode(model, "lut")
    out = model(x)
    set_mode(model, "quant")
    assert not torch.equal(out, model(x))
    set_mode(model, "lut")
    model(x).square().sum().backward()
    assert model[0].weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0

    # the STE's gradient is the exact product's: one layer under the same upstream gradient c, in lut
    # mode (approximate table) and in quant mode (exact product), has other outputs and the same gradients
    torch.manual_seed(1)
    single = convert(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1)), FORMATS[fmt_name])
    xs = torch.randn(4, 2, 5, 5)
    calibrate(single, [xs])
    approx_layers(single)["0"].freeze_ranges = True
    assign(single, {"0": _mult(FORMATS[fmt_name].signed, seed=0)})
    c = torch.randn(4, 4, 5, 5)
    grads_by_mode = {}
    outs = {}
    for mode in ("lut", "quant"):
        single.zero_grad()
        xi = xs.clone().requires_grad_(True)
        set_mode(single, mode)
        out = single(xi)
        (out * c).sum().backward()
        outs[mode] = out.detach()
        grads_by_mode[mode] = (single[0].weight.grad.clone(), single[0].bias.grad.clone(), xi.grad.clone())
    assert not torch.allclose(outs["lut"], outs["quant"])
    for g_lut, g_exact in zip(grads_by_mode["lut"], grads_by_mode["quant"]):
        assert g_exact.abs().sum() > 0
        torch.testing.assert_close(g_lut, g_exact, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_restores_the_exact_quantized_model():
    fmt = FORMATS["affine"]

    def build():
        return convert(
            nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), fmt
        )

    torch.manual_seed(0)
    model = build()
    x = torch.randn(8, 1, 6, 6)
    calibrate(model, [x])
    set_mode(model, "quant")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # QAT steps: weights and EMA ranges move
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()
    mult = _mult(False, seed=0)
    assign(model, {"3": mult})
    y_quant = model(x)
    set_mode(model, "lut")
    y_lut = model(x)

    torch.manual_seed(1)
    other = build()
    other.load_state_dict(model.state_dict())
    other.eval()
    set_mode(other, "quant")
    assert torch.equal(other(x), y_quant)
    assign(other, {"3": mult})
    set_mode(other, "lut")
    assert torch.equal(other(x), y_lut)
    assert [i.macs for i in layer_infos(other)] == [i.macs for i in layer_infos(model)]


def test_negative_inputs_are_carried_by_a_shifted_encoding_never_clipped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    convert(model, FORMATS["sign-magnitude"])
    x = torch.randn(4, 1, 5, 5)  # normalised images: negative inputs to the first layer
    calibrate(model, [x])
    model.eval()
    first, second = approx_layers(model).values()
    assert first.act_rule == "shifted" and first.pad_code > 0
    assert second.act_rule == "relu" and second.pad_code == 0
    assert [i.act_rule for i in layer_infos(model)] == ["shifted", "relu"]
    st = first._qstate(x.device)
    decoded = (first.input_codes(x).float() - first.pad_code) * st.s_a
    assert (decoded - x).abs().max() <= st.s_a / 2 + 1e-6  # negatives survive quantization
    set_mode(model, "quant")
    model(x)
    assert negative_clipping(model) == {}
    # a zero-point-0 layer that meets negatives it never saw in calibration reports them
    second(-torch.ones(1, 3, 2, 2))
    second(-torch.ones(1, 3, 2, 2))
    assert negative_clipping(model) == {"2": 2}  # forward passes in which it clipped


def test_assign_rejects_unknown_layers_and_wrong_signedness():
    model = convert(nn.Sequential(nn.Linear(4, 4)), FORMATS["signed"])
    with pytest.raises(UserError, match="unknown layer"):
        assign(model, {"nope": _mult(True)})
    with pytest.raises(UserError, match="unsigned"):
        assign(model, {"0": _mult(False)})


def test_modes_are_an_enum_equal_to_their_strings():
    model = convert(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), FORMATS["signed"])
    set_mode(model, Mode.AGN)
    assert all(layer.mode is Mode.AGN and layer.mode == "agn" for layer in approx_layers(model).values())
    set_mode(model, "lut")
    assert all(layer.mode is Mode.LUT for layer in approx_layers(model).values())
    assert f"{Mode.ERRMODEL}" == str(Mode.ERRMODEL) == "errmodel"
    with pytest.raises(ValueError, match="mode: expected one of float, quant, lut, agn, errmodel"):
        set_mode(model, "table")


def test_approximated_simulates_the_assignment_and_restores_modes_and_multipliers():
    torch.manual_seed(0)
    model = convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), FORMATS["signed"]).eval()
    x = torch.randn(8, 6)
    calibrate(model, [x])
    layers = approx_layers(model)
    approx, other = _mult(True), _mult(True, seed=1)
    set_mode(model, "quant")
    layers["2"].mode = Mode.AGN
    layers["2"].multiplier = other
    with torch.no_grad():
        assign(layers["0"], {})
        set_mode(layers["0"], "lut")
        y_exact_lut = model[0](x)
        with approximated(model, {"0": approx}) as m:
            assert m is model
            assert layers["0"].mode is Mode.LUT and layers["2"].mode is Mode.LUT
            assert layers["0"].multiplier is approx and layers["2"].multiplier is None  # unnamed: exact
            y_inside = model(x)
            assert not torch.equal(model[0](x), y_exact_lut)
        assert layers["0"].mode is Mode.LUT and layers["0"].multiplier is None
        assert layers["2"].mode is Mode.AGN and layers["2"].multiplier is other
        set_mode(model, "quant")
        assign(model, {})
        with pytest.raises(KeyError), approximated(model, {"0": approx, "2": approx}):
            assert not torch.equal(model(x), y_inside)  # "2" approximated too
            raise KeyError("boom")
        assert all(layer.mode is Mode.QUANT for layer in layers.values())
        assert all(layer.multiplier is None for layer in layers.values())
        with pytest.raises(UserError, match="unknown layer"), approximated(model, {"nope": approx}):
            pass
        assert all(layer.mode is Mode.QUANT for layer in layers.values())


def test_uncalibrated_quant_mode_says_what_to_do():
    layer = convert(nn.Linear(4, 2), FORMATS["signed"]).eval()
    set_mode(layer, "quant")
    with torch.no_grad(), pytest.raises(RuntimeError, match="calibrate"):
        layer(torch.randn(1, 4))


def test_cached_codes_and_tables_follow_assignment_weights_and_ranges():
    torch.manual_seed(0)
    fmt = FORMATS["sign-magnitude"]
    layer = convert(nn.Conv2d(2, 3, 3, padding=1), fmt).eval()
    x = torch.relu(torch.randn(2, 2, 5, 5))
    calibrate(layer, [x])
    set_mode(layer, "lut")
    approx, exact = _mult(False), _mult(False, exact=True)
    with torch.no_grad():
        y_exact = layer(x)
        assign(layer, {"": approx})
        y_approx = layer(x)
        assign(layer, {"": exact})  # an exact Multiplier is the same as no assignment
        assert torch.equal(layer(x), y_exact)
        layer.multiplier = approx  # set directly, as a simulator may do
        assert torch.equal(layer(x), y_approx)
        layer.weight.mul_(0.5)  # in-place weight update (optimizer step)
        y_half = layer(x)
        assert not torch.equal(y_half, y_approx)
        codes = layer.input_codes(x)
        assert torch.equal(
            y_half, layer.dequantize_acc(layer.int_forward(codes, approx)) + layer.bias.view(1, -1, 1, 1)
        )
        layer.act_quant.running_max.mul_(2)  # a new activation range
        y_range = layer(x)
        assert not torch.equal(y_range, y_half)
        twin = copy.deepcopy(layer)  # copies carry no stale caches
        assert torch.equal(twin(x), y_range)
        twin.weight.mul_(2)
        assert torch.equal(layer(x), y_range) and not torch.equal(twin(x), y_range)


class _ResidualNet(nn.Module):
    """Residual add without a ReLU after it (negative inputs downstream), a depthwise conv, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.after_add = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + self.pw(torch.relu(self.dw(h)))  # no ReLU: after_add sees negatives
        return self.head(torch.relu(self.after_add(h)).flatten(1))


@pytest.mark.parametrize("fmt_name", list(FORMATS))
def test_whole_network_exact_table_equals_quant_and_negative_layers_are_shifted(fmt_name):
    torch.manual_seed(0)
    model = convert(_ResidualNet(), FORMATS[fmt_name]).eval()
    x = torch.randn(16, 3, 8, 8)
    calibrate(model, [x])
    rules = {i.name: i.act_rule for i in layer_infos(model)}
    if FORMATS[fmt_name].signed:
        assert set(rules.values()) == {"symmetric"}
    else:
        assert rules == {
            "stem": "shifted",
            "dw": "relu",
            "pw": "relu",
            "after_add": "shifted",
            "head": "relu",
        }
    with torch.no_grad():
        set_mode(model, "quant")
        y_quant = model(x)
        set_mode(model, "lut")
        assert torch.equal(model(x), y_quant)
        set_mode(model, "float")
        y_float = model(x)
    assert (y_quant - y_float).abs().max() < 0.1 * y_float.abs().max()
    assert negative_clipping(model) == {}


@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Linear(1100, 3), (4, 1100)),  # chunked float32 sums
        (lambda: nn.Conv2d(72, 3, 3, padding=1), (2, 72, 3, 3)),  # chunked over input channels
        (lambda: nn.Conv2d(256, 4, 3, padding=1, groups=2), (1, 256, 3, 3)),  # grouped: float64
    ],
)
def test_large_accumulators_stay_exact(fmt_name, make, shape):
    torch.manual_seed(0)
    fmt = FORMATS[fmt_name]
    layer = convert(make(), fmt).eval()
    with torch.no_grad():  # same-sign near-maximal products: sums near the worst case K·max|a|·max|w|
        layer.weight.copy_(1 + 0.01 * torch.rand_like(layer.weight))
    x = 4.0 - 0.1 * torch.rand(*shape)
    x.view(-1)[0] = -0.3  # a shifted encoding (non-zero zero point) in the unsigned formats
    calibrate(layer, [x])
    codes = layer.input_codes(x)
    acc = layer.int_forward(codes)
    if layer.fan_in * layer._chunk_bound() >= 2**24:  # the chunked / float64 path is taken
        assert acc.abs().max() > 2**24  # beyond float32's exact integers
    ref = reference_acc(layer, codes, None)
    assert torch.equal(acc.reshape(ref.shape).to(torch.int64), ref)
    with torch.no_grad():
        set_mode(layer, "quant")
        y_quant = layer(x)
        set_mode(layer, "lut")
        assert torch.equal(layer(x), y_quant)


@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_gemm_operands_reproduce_the_accumulator(fmt_name, kind):
    layer, x = _make(kind, FORMATS[fmt_name], True, "signed")
    codes = layer.input_codes(x)
    pairs = layer.gemm_operands(codes)
    assert len(pairs) == layer.groups
    z_a, z_w = layer.pad_code, layer._qstate(x.device).z_w.to(torch.int64)
    n_out = layer.out_channels // layer.groups
    outs = []
    for g, (a, b) in enumerate(pairs):
        assert a.dtype == layer.fmt.act_dtype and b.dtype == layer.fmt.weight_dtype
        assert a.shape[1] == b.shape[0] == layer.fan_in
        outs.append((a.to(torch.int64) - z_a) @ (b.to(torch.int64) - z_w[g * n_out : (g + 1) * n_out]))
    acc = layer.int_forward(codes).to(torch.int64)
    if kind == "linear":
        assert torch.equal(outs[0], acc)
    else:
        n, c, ho, wo = acc.shape
        got = torch.cat([o.reshape(n, ho * wo, n_out) for o in outs], dim=2).permute(0, 2, 1)
        assert torch.equal(got.reshape(acc.shape), acc)
