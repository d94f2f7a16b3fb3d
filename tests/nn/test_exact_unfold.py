"""The exact unfold + chunked-GEMM convolution (the CUDA path of the exactly-quantized mode) equals the
reference exact convolution bit for bit; it is device-independent, so it is tested here on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dse.nn.conv as conv_mod
from dse.models import build_model, fold_batchnorm
from dse.nn import Mode, calibrate, convert, set_mode
from dse.nn.exact import chunk_bound, exact_conv_acc, exact_conv_unfold
from dse.quant import QuantFormat

FORMATS = [
    QuantFormat(signed=False, weight_scheme="sign-magnitude", per_channel=True),
    QuantFormat(signed=True, weight_scheme="symmetric", per_channel=True),
    QuantFormat(signed=False, weight_scheme="affine", per_channel=True),
]


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "stride", "padding", "dilation", "hw"),
    [
        (16, 16, 3, 1, 1, 1, 12),  # K = 144: one chunk, float32
        (64, 32, 3, 2, 1, 1, 9),  # K = 576: chunked (partial sums would pass 2^24), float64
        (3, 8, 5, 1, 2, 2, 11),  # dilation, odd sizes
        (32, 64, 1, 2, 0, 1, 8),  # 1x1 projection shortcut
    ],
)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.signed}-{f.weight_scheme}")
def test_unfold_gemm_equals_the_exact_conv(c_in, c_out, k, stride, padding, dilation, hw, fmt):
    g = torch.Generator().manual_seed(c_in * 7 + k)
    a_lo, a_hi = fmt.act_range
    w_lo, w_hi = (-127, 127) if fmt.weight_scheme != "affine" else (-255, 255)
    bound = chunk_bound(fmt)
    # worst-case magnitudes (extremes of both ranges) so that the chunking is what keeps it exact
    xc = torch.randint(a_lo, a_hi + 1, (5, c_in, hw, hw), generator=g).float()
    xc[:, :, ::2] = float(a_hi if abs(a_hi) >= abs(a_lo) else a_lo)
    wc = torch.randint(w_lo, w_hi + 1, (c_out, c_in, k, k), generator=g).float()
    wc[::2] = float(w_hi)

    def conv(x, w):
        return F.conv2d(x, w, None, stride, padding, dilation, 1)

    want = exact_conv_acc(conv, xc, wc, (k, k), 1, bound)
    got = exact_conv_unfold(xc, wc, (stride,) * 2, (padding,) * 2, (dilation,) * 2, bound)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
    exact = F.conv2d(xc.double(), wc.double(), None, stride, padding, dilation)
    assert torch.equal(got.double(), exact)


def test_small_slabs_give_the_same_result(monkeypatch):
    g = torch.Generator().manual_seed(3)
    xc = torch.randint(0, 256, (7, 16, 10, 10), generator=g).float()
    wc = torch.randint(-127, 128, (16, 16, 3, 3), generator=g).float()
    whole = exact_conv_unfold(xc, wc, (1, 1), (1, 1), (1, 1), 255 * 127)
    import dse.nn.exact as exact_mod

    monkeypatch.setattr(exact_mod, "UNFOLD_SLAB_BYTES", 1)  # one image per slab
    assert torch.equal(exact_conv_unfold(xc, wc, (1, 1), (1, 1), (1, 1), 255 * 127), whole)


def test_resnet20_quant_mode_on_the_unfold_path_is_bit_identical(monkeypatch):
    torch.manual_seed(0)
    model = build_model("resnet20", input_shape=(1, 28, 28), num_classes=10).eval()
    fold_batchnorm(model)
    convert(model, FORMATS[0])
    x = torch.rand(6, 1, 28, 28)
    calibrate(model, [x])
    set_mode(model, Mode.QUANT)
    with torch.no_grad():
        ref = model(x)
        monkeypatch.setattr(conv_mod, "use_unfold", lambda t: True)  # as on CUDA
        got = model(x)
    assert torch.equal(got, ref)
