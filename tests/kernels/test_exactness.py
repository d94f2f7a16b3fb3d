"""Every backend bit-exact against the brute-force reference: GEMMs, convolutions, prepared weights and
batched candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dse.kernels import (
    KernelInputError,
    approx_conv2d,
    approx_conv2d_multi,
    approx_conv2d_reference,
    approx_matmul,
    approx_matmul_multi,
    approx_matmul_reference,
    prepare_conv2d,
    prepare_conv2d_multi,
    prepare_matmul,
    prepare_matmul_multi,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_tables import (
    SIGNED,
    TABLES,
    V,
    codes,
    drum_like,
    exact_backends,
    exact_signed,
    low_rank,
    random_table,
    sign_magnitude,
    some_tables,
    truncated_unsigned,
)


def test_matmul_every_backend_matches_reference_sweep():
    g = torch.Generator().manual_seed(1)
    shapes = [
        (1, 1, 1),
        (1, 7, 3),
        (5, 1, 9),
        (13, 31, 7),
        (50, 17, 2),
        (64, 64, 64),
        (3, 300, 5),
        (70, 5, 1),
    ]
    dtypes = [torch.uint8, torch.int8]
    for i, (m, k, n) in enumerate(shapes):
        for name, lut in some_tables(i):
            a = codes((m, k), dtypes[i % 2], g)
            b = codes((k, n), dtypes[(i // 2) % 2], g)
            ref = approx_matmul_reference(a, b, lut)
            for backend in exact_backends(lut):
                out = approx_matmul(a, b, lut, backend=backend)
                assert out.dtype == torch.int32 and out.shape == (m, n)
                assert torch.equal(out, ref), (name, backend, (m, k, n))


def test_large_k_extreme_tables_have_no_float_rounding():
    g = torch.Generator().manual_seed(2)
    m, k, n = 5, 4608, 6
    a = torch.full((m, k), 255, dtype=torch.uint8)
    a[1:] = codes((m - 1, k), torch.uint8, g)
    b = torch.full((k, n), 127, dtype=torch.int8)
    b[:, 1:] = codes((k, n - 1), torch.int8, g)
    worst = torch.full((256, 256), 255 * 127, dtype=torch.int32)  # every partial sum at its largest
    worst[::3] = -255 * 127
    odd = torch.full((256, 256), 2**24 + 1, dtype=torch.int32)  # not a float32 even alone
    rank1 = (SIGNED[:, None] * (V[None, :] * 1021 + 7)).to(torch.int32)
    exact_sm = sign_magnitude((V[:, None] * V[None, :]).to(torch.int32))  # partial products, largest K steps
    for lut in (worst, odd, rank1, random_table(g, 2**30), exact_sm, truncated_unsigned(2)):
        expect = lut.long()[a.long() & 255][:, :, None]  # independent of the reference: int64 numpy-style
        expect = lut.long().reshape(-1)[(a.long()[:, :, None] & 255) * 256 + (b.long()[None] & 255)].sum(1)
        expect = expect.to(torch.int32)  # int32 wrap-around, as the contract says
        for backend in exact_backends(lut):
            assert torch.equal(approx_matmul(a, b, lut, backend=backend), expect), backend


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 40),
    n=st.integers(1, 20),
    signed_a=st.booleans(),
    signed_b=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["random", "rank2", "exact", "sm_bam"]),
)
def test_matmul_property(m, k, n, signed_a, signed_b, seed, kind):
    g = torch.Generator().manual_seed(seed)
    lut = {
        "random": random_table(g),
        "rank2": low_rank(g, 2),
        "exact": exact_signed(),
        "sm_bam": TABLES["sm_bam"],
    }[kind]
    a = codes((m, k), torch.int8 if signed_a else torch.uint8, g)
    b = codes((k, n), torch.int8 if signed_b else torch.uint8, g)
    ref = approx_matmul_reference(a, b, lut)
    assert torch.equal(approx_matmul(a, b, lut), ref)
    for backend in exact_backends(lut):
        assert torch.equal(approx_matmul(a, b, lut, backend=backend), ref), backend


def test_prepared_matmul_reuses_tables_and_stays_exact():
    g = torch.Generator().manual_seed(3)
    lut = random_table(g)
    b = codes((40, 9), torch.int8, g)
    p = prepare_matmul(b, lut, backend="cpu")
    for m in (3, 3, 100, 1):  # first call tiny (direct gather), later ones through the kept tables
        a = codes((m, 40), torch.uint8, g)
        assert torch.equal(p(a), approx_matmul_reference(a, b, lut))
    assert p.nbytes > 0 and p.backend == "cpu"
    with pytest.raises(KernelInputError, match="K = 40"):
        p(codes((2, 41), torch.uint8, g))


def test_numpy_table_is_accepted():
    g = torch.Generator().manual_seed(4)
    lut = random_table(g)
    a, b = codes((4, 5), torch.uint8, g), codes((5, 3), torch.uint8, g)
    assert torch.equal(approx_matmul(a, b, lut.numpy().astype(np.int64)), approx_matmul_reference(a, b, lut))


CONV_CASES = [
    # (N, C_in, H, W, C_out, kh, kw, stride, padding, dilation, groups)
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1),
    (2, 3, 7, 5, 4, 3, 3, 1, 1, 1, 1),
    (1, 4, 9, 8, 6, 3, 2, (2, 1), (1, 2), (1, 2), 2),
    (2, 6, 8, 8, 6, 3, 3, 2, 1, 1, 6),  # depthwise
    (1, 4, 10, 9, 8, 3, 3, 1, 2, 2, 4),  # depthwise with channel multiplier 2, dilation
    (3, 2, 5, 5, 3, 5, 5, 1, 2, 1, 1),
]


def test_conv_every_backend_matches_reference():
    g = torch.Generator().manual_seed(5)
    for i, (n, c, h, w, co, kh, kw, s, p, d, grp) in enumerate(CONV_CASES):
        x = codes((n, c, h, w), [torch.uint8, torch.int8][i % 2], g)
        wt = codes((co, c // grp, kh, kw), [torch.int8, torch.uint8][(i // 2) % 2], g)
        for name, lut in some_tables(i):
            pad_code = [0, 7, -3, 200][i % 4]
            ref = approx_conv2d_reference(x, wt, lut, s, p, d, grp, pad_code=pad_code & 0xFF)
            for backend in exact_backends(lut):
                out = approx_conv2d(x, wt, lut, s, p, d, grp, pad_code=pad_code, backend=backend)
                assert out.dtype == torch.int32
                assert torch.equal(out, ref), (name, backend, i)


def test_pad_code_feeds_the_table():
    """With a table that only counts pad-code products, the output counts the padded taps."""
    lut = torch.zeros(256, 256, dtype=torch.int32)
    lut[9, :] = 1
    x = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    w = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    out = approx_conv2d(x, w, lut, padding=1, pad_code=9)
    assert out[0, 0].tolist() == [[5, 3, 5], [3, 0, 3], [5, 3, 5]]


def test_prepared_conv_matches_single_calls():
    g = torch.Generator().manual_seed(6)
    lut = random_table(g)
    w = codes((6, 2, 3, 3), torch.int8, g)
    p = prepare_conv2d(w, lut, 1, 1, 1, 3, pad_code=5)
    for _ in range(2):
        x = codes((2, 6, 6, 7), torch.uint8, g)
        assert torch.equal(p(x), approx_conv2d_reference(x, w, lut, 1, 1, 1, 3, pad_code=5))


def test_matmul_multi_bit_exact_vs_single_calls():
    g = torch.Generator().manual_seed(7)
    a = codes((30, 25), torch.uint8, g)
    luts = [random_table(g), exact_signed(), truncated_unsigned(), drum_like(g), random_table(g, 2**30)]
    cands = [(codes((25, n), torch.int8, g), lut) for n, lut in zip((4, 1, 7, 3, 5), luts)]
    for backend in ("auto", "cpu", "reference"):
        outs = approx_matmul_multi(a, cands, backend=backend)
        assert len(outs) == len(cands)
        for out, (b, lut) in zip(outs, cands):
            assert out.is_contiguous()
            assert torch.equal(out, approx_matmul(a, b, lut, backend="reference"))
    assert approx_matmul_multi(a, []) == []
    prepared = prepare_matmul_multi(cands)
    for m in (30, 2):
        a2 = codes((m, 25), torch.int8, g)
        for out, (b, lut) in zip(prepared.apply_all(a2), cands):
            assert torch.equal(out, approx_matmul_reference(a2, b, lut))


def test_conv_multi_bit_exact_vs_single_calls():
    g = torch.Generator().manual_seed(8)
    x = codes((2, 4, 7, 6), torch.uint8, g)
    luts = [random_table(g), exact_signed(), drum_like(g), truncated_unsigned()]
    cands = [(codes((co, 2, 3, 3), torch.int8, g), lut) for co, lut in zip((2, 4, 6, 2), luts)]
    outs = approx_conv2d_multi(x, cands, (2, 1), 1, (1, 2), 2, pad_code=11)
    for out, (w, lut) in zip(outs, cands):
        assert torch.equal(out, approx_conv2d_reference(x, w, lut, (2, 1), 1, (1, 2), 2, pad_code=11))
    prepared = prepare_conv2d_multi(cands, (2, 1), 1, (1, 2), 2, pad_code=11)
    assert all(torch.equal(p, o) for p, o in zip(prepared.apply_all(x), outs))
    with pytest.raises(KernelInputError, match="kernel size"):
        approx_conv2d_multi(x, [cands[0], (codes((2, 2, 1, 1), torch.int8, g), luts[0])], groups=2)
