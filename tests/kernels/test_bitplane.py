"""The bitplane backend: partial-product tables as exact int8 GEMMs (oneDNN, CPU only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dse.kernels import (
    approx_conv2d_reference,
    approx_matmul,
    approx_matmul_reference,
    bitplane_planes,
    prepare_conv2d,
)
from dse.kernels.bitplane import available as bitplane_available
from dse.kernels.bitplane import conv_available
from kernel_tables import (
    CONV_SHAPES,
    V,
    broken_array,
    codes,
    drum_like,
    exact_signed,
    library_tables,
    low_rank,
    random_table,
    sign_magnitude,
)


def test_bitplane_planes_rebuild_every_partial_product_table_exactly():
    found = 0
    for (name, scheme), lut in library_tables().items():
        p = bitplane_planes(lut)
        partial_product = name.startswith(("exact", "trunc", "bam", "optrunc", "perf"))
        assert (p is not None) == partial_product, (name, scheme)
        if p is None:
            continue
        found += 1
        rebuilt = np.zeros((256, 256), np.int64)
        for plane in p.planes:
            assert np.abs(plane.weights).max() <= 63 and plane.mask >> plane.shift <= 255
            h = (np.arange(256) & plane.mask) >> plane.shift
            rebuilt += 64**plane.level * np.outer(h, plane.weights)
        assert np.array_equal(rebuilt, lut.numpy()), (name, scheme)
        assert len(p.planes) <= 9
    assert found >= 60  # 30+ partial-product designs x 2 weight schemes
    g = torch.Generator().manual_seed(30)
    for lut in (random_table(g), drum_like(g), exact_signed(), low_rank(g, 2)):
        assert bitplane_planes(lut) is None


@pytest.mark.skipif(not bitplane_available(), reason="oneDNN int8 GEMM not usable on this CPU")
def test_bitplane_library_tables_match_reference_in_every_layer_shape():
    g = torch.Generator().manual_seed(31)
    tables = [(k, t) for k, t in library_tables().items() if bitplane_planes(t) is not None]
    for i, ((name, scheme), lut) in enumerate(tables):
        m, k, n = [(1, 1, 1), (9, 25, 6), (40, 150, 16), (3, 1100, 2)][i % 4]
        a = codes((m, k), torch.uint8, g)
        a[0] = 255
        b = codes((k, n), torch.int8 if scheme == "sign-magnitude" else torch.uint8, g)
        assert torch.equal(
            approx_matmul(a, b, lut, backend="bitplane"), approx_matmul_reference(a, b, lut)
        ), name
    x = codes((2, 3, 7, 6), torch.uint8, g)
    w = codes((4, 3, 3, 3), torch.int8, g)
    lut = sign_magnitude(broken_array(3, 9))
    p = prepare_conv2d(w, lut, 1, 1, backend="bitplane")
    assert p.backend == "bitplane" and p.nbytes > 0
    for _ in range(2):
        assert torch.equal(p(x), approx_conv2d_reference(x, w, lut, 1, 1, pad_code=0))


@pytest.mark.skipif(not bitplane_available(), reason="oneDNN int8 GEMM not usable on this CPU")
def test_bitplane_splits_k_so_float32_outputs_stay_exact():
    from dse.kernels import bitplane

    lut = sign_magnitude((V[:, None] * V[None, :]).to(torch.int32))
    k = 4608
    b = torch.full((1, k, 3), 127, dtype=torch.int8)
    b[0, :, 1] = -127
    w = bitplane.BitPlaneWeights(b.view(torch.uint8), bitplane_planes(lut))
    assert len(w.units[0]) > len(bitplane_planes(lut).levels())  # K was cut into chunks
    a = torch.full((1, 4, k), 255, dtype=torch.uint8)
    out = w.apply(a)
    assert out[0, :, 0].tolist() == [255 * 127 * k] * 4 and out[0, :, 1].tolist() == [-255 * 127 * k] * 4


def test_bitplane_is_cpu_only():
    from dse.kernels import bitplane

    assert not bitplane.available("meta") and not bitplane.available("cuda")


@pytest.mark.skipif(
    not (bitplane_available() and conv_available()), reason="oneDNN int8 convolution not usable on this CPU"
)
def test_bitplane_convolutions_run_without_im2col_and_match_reference(monkeypatch):
    """A convolution on a partial-product table runs as int8 convolutions on x's planes (auto picks it),
    bit-exact for every library table, stride, dilation and pad code (non-zero pad codes included); a
    grouped convolution falls back to im2col."""
    from dse.kernels import approx_conv2d, conv

    def no_im2col(*args, **kwargs):
        raise AssertionError("im2col called")

    g = torch.Generator().manual_seed(32)
    tables = [(k, t) for k, t in library_tables().items() if bitplane_planes(t) is not None]
    shapes = CONV_SHAPES
    with monkeypatch.context() as mp:
        mp.setattr(conv, "im2col", no_im2col)
        mp.setattr("dse.kernels.prepared.im2col", no_im2col)
        for i, ((name, scheme), lut) in enumerate(tables):
            c, k, s, p, d, pad = shapes[i % len(shapes)]
            x = codes((2, c, 9, 8), torch.uint8, g)
            x[0] = 255  # the int16-saturation worst case of the pair sums
            w = codes((6, c, k, k), torch.int8 if scheme == "sign-magnitude" else torch.uint8, g)
            expect = approx_conv2d_reference(x, w, lut, s, p, d, pad_code=pad)
            plan = prepare_conv2d(w, lut, s, p, d, pad_code=pad)
            got = approx_conv2d(x, w, lut, s, p, d, pad_code=pad, backend="bitplane")
            assert torch.equal(got, expect), (name, c, k, s, p, d, pad)
            if c * k * k >= 32:  # auto: bitplane without a race (smaller K races cpu / lowrank, on im2col)
                assert plan.backend == "bitplane" and torch.equal(plan(x), expect), name
    lut = sign_magnitude(broken_array(3, 9))
    x, w = codes((2, 4, 7, 6), torch.uint8, g), codes((4, 2, 3, 3), torch.int8, g)
    grouped = approx_conv2d(x, w, lut, 1, 1, groups=2, backend="cpu")
    assert torch.equal(grouped, approx_conv2d_reference(x, w, lut, 1, 1, groups=2))
