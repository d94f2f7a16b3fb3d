"""The lowrank backend: exact integer factors, exact float GEMMs whatever the user's matmul precision."""

from __future__ import annotations

import numpy as np
import torch
from dse.kernels import approx_matmul, approx_matmul_reference, lowrank_factors
from kernel_tables import (
    CONV_SHAPES,
    codes,
    drum_like,
    exact_signed,
    low_rank,
    random_table,
    truncated_unsigned,
)


def test_lowrank_factors_are_exact_and_minimal():
    g = torch.Generator().manual_seed(11)
    for lut, rank in ((exact_signed(), 1), (drum_like(g), 1), (truncated_unsigned(), 7), (low_rank(g, 5), 5)):
        f = lowrank_factors(lut)
        assert f is not None and f.rank == rank == np.linalg.matrix_rank(lut.numpy().astype(np.float64))
        assert (f.u.astype(object).dot(f.v.astype(object)) == lut.numpy().astype(object) * f.denom).all()
    assert lowrank_factors(random_table(g)) is None
    # small factors keep the truncated multiplier's GEMMs in float32
    assert lowrank_factors(truncated_unsigned()).float_plan(576)[0] == torch.float32


def test_lowrank_exact_under_reduced_matmul_precision():
    """A user's torch.set_float32_matmul_precision("medium") (bf16 / TF32 GEMMs) must not round the result."""
    g = torch.Generator().manual_seed(14)
    lut = drum_like(g)
    a, b = codes((64, 300), torch.uint8, g), codes((300, 16), torch.int8, g)
    ref = approx_matmul_reference(a, b, lut)
    saved = [torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision]
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        assert torch.equal(approx_matmul(a, b, lut, backend="lowrank"), ref)
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"  # the user's setting is restored
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = saved


def test_lowrank_convolutions_run_without_im2col_and_match_reference(monkeypatch):
    """A convolution through a low-rank table runs as float32 convolutions of U_j[x] (auto picks lowrank
    for a DRUM-like table at K >= 32), bit-exact for strides, dilation, pad codes (non-zero ones and
    tables with U[0] != 0 included), channel chunks (large K) and denominators; also under a user's
    reduced oneDNN convolution precision."""
    from dse.kernels import approx_conv2d, approx_conv2d_reference, prepare_conv2d

    def no_im2col(*args, **kwargs):
        raise AssertionError("im2col called")

    g = torch.Generator().manual_seed(15)
    drum = drum_like(g)
    assert lowrank_factors(drum).u[0].any()  # U[0] != 0: zero padding would be wrong, padding reads U[pad]
    tables = [drum, exact_signed(), truncated_unsigned()]
    shapes = CONV_SHAPES
    saved = torch.backends.mkldnn.conv.fp32_precision
    try:
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        with monkeypatch.context() as mp:
            mp.setattr("dse.kernels.prepared.im2col", no_im2col)
            for lut in tables:
                assert lowrank_factors(lut).float_plan(1000)[0] == torch.float32
                for c, k, s, p, d, pad in shapes:
                    x = codes((2, c, 9, 8), torch.uint8, g)
                    x[0] = 255
                    w = codes((6, c, k, k), torch.int8, g)
                    got = approx_conv2d(x, w, lut, s, p, d, pad_code=pad, backend="lowrank")
                    assert torch.equal(got, approx_conv2d_reference(x, w, lut, s, p, d, pad_code=pad))
            # K = 2500 > one exact float32 chunk of the signed exact table (1024 steps): channel chunks
            lut = exact_signed()
            assert lowrank_factors(lut).float_plan(2500) == (torch.float32, 1024)
            x, w = codes((1, 2500, 3, 3), torch.int8, g), codes((2, 2500, 1, 1), torch.int8, g)
            x[0], w[0] = -128, -128  # the largest products: 2500 * 2^14 > 2^24
            got = approx_conv2d(x, w, lut, backend="lowrank")
            assert torch.equal(got, approx_conv2d_reference(x, w, lut))
    finally:
        torch.backends.mkldnn.conv.fp32_precision = saved
    w = codes((8, 16, 3, 3), torch.int8, g)
    assert prepare_conv2d(w, drum_like(g), 1, 1).backend == "lowrank"
