"""dse.kernels: every backend bit-exact against the brute-force reference, batched candidates, STE, dispatch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dse.kernels import (
    KernelInputError,
    approx_conv2d,
    approx_conv2d_multi,
    approx_conv2d_reference,
    approx_conv2d_ste,
    approx_matmul,
    approx_matmul_multi,
    approx_matmul_reference,
    approx_matmul_ste,
    bitplane_planes,
    chosen_backends,
    lowrank_factors,
    prepare_conv2d,
    prepare_conv2d_multi,
    prepare_matmul,
    prepare_matmul_multi,
)
from dse.kernels.bitplane import available as bitplane_available
from dse.kernels.checks import check_lut
from hypothesis import given, settings
from hypothesis import strategies as st

V = torch.arange(256, dtype=torch.int64)
SIGNED = torch.where(V < 128, V, V - 256)  # value of a signed byte


def codes(shape, dtype, g):
    lo, hi = (-128, 128) if dtype == torch.int8 else (0, 256)
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


def random_table(g, bound=70000):
    """Asymmetric, full rank."""
    return torch.randint(-bound, bound + 1, (256, 256), generator=g, dtype=torch.int64).to(torch.int32)


def exact_signed():
    return (SIGNED[:, None] * SIGNED[None, :]).to(torch.int32)


def truncated_unsigned(t=8):
    """Unsigned multiplier with partial-product columns below 2^t dropped: rank 7 for t=8."""
    i = torch.arange(8)
    w = (2 ** (i[:, None] + i[None, :])) * ((i[:, None] + i[None, :]) >= t)
    bits = (V[:, None] >> i) & 1
    return (bits @ w @ bits.t()).to(torch.int32)


def sign_magnitude(lut_u):
    """The effective table of dse.quant's sign-magnitude weights: T[a, w & 0xFF] = sign(w)·lut_u[a, |w|]."""
    return (lut_u.long()[:, SIGNED.abs()] * SIGNED.sign()[None, :]).to(torch.int32)


def broken_array(h=2, v=7):
    """Unsigned broken-array multiplier: partial products a_i·b_j kept when i + j >= v and j >= h."""
    i = torch.arange(8)
    w = (2 ** (i[:, None] + i[None, :])) * ((i[:, None] + i[None, :]) >= v) * (i[None, :] >= h)
    bits = (V[:, None] >> i) & 1
    return (bits @ w @ bits.t()).to(torch.int32)


def drum_like(g):
    """Rank 1, asymmetric: f(a)·h(b) with odd-ish integer profiles."""
    f = torch.randint(-300, 300, (256,), generator=g)
    h = torch.randint(-300, 300, (256,), generator=g)
    return (f[:, None] * h[None, :]).to(torch.int32)


def low_rank(g, r, bound=40):
    u = torch.randint(-bound, bound + 1, (256, r), generator=g)
    v = torch.randint(-bound, bound + 1, (r, 256), generator=g)
    return (u @ v).to(torch.int32)


def _tables():
    g = torch.Generator().manual_seed(0)
    return {
        "random": random_table(g),
        "exact_s8": exact_signed(),
        "truncated": truncated_unsigned(),
        "drum_like": drum_like(g),
        "rank3": low_rank(g, 3),
        "sm_bam": sign_magnitude(broken_array()),  # partial-product table with sign-magnitude weights
        "huge": random_table(g, 2**30),  # float32 would round; int32 sums wrap
    }


TABLES = _tables()
NAMES = list(TABLES)


def exact_backends(lut) -> list[str]:
    """Every backend that can run this table on CPU (the reference excepted)."""
    out = ["cpu", "auto"]
    out += ["lowrank"] if lowrank_factors(lut) is not None else []
    out += ["bitplane"] if bitplane_available() and bitplane_planes(lut) is not None else []
    return out


def some_tables(i, count=3):
    """A rotating subset of the tables for case i (every table meets every backend across the sweep)."""
    return [(NAMES[(i + j) % len(NAMES)], TABLES[NAMES[(i + j) % len(NAMES)]]) for j in range(count)]


# ------------------------------------------------------------------------------------------- matmul
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


def test_huge_weight_tables_are_streamed_not_kept(monkeypatch):
    from dse.kernels import cpu

    monkeypatch.setattr(cpu, "KEEP_TABLE_BYTES", 1000)
    monkeypatch.setattr(cpu, "SLAB_BYTES", 3 * 256 * 4 * 5)  # 3 K steps per slab at N = 5
    g = torch.Generator().manual_seed(15)
    lut = random_table(g)
    b = codes((20, 5), torch.int8, g)
    p = prepare_matmul(b, lut, backend="cpu")
    for m in (60, 70, 2):
        a = codes((m, 20), torch.uint8, g)
        assert torch.equal(p(a), approx_matmul_reference(a, b, lut))
    assert p.nbytes == 0


def test_numpy_table_is_accepted():
    g = torch.Generator().manual_seed(4)
    lut = random_table(g)
    a, b = codes((4, 5), torch.uint8, g), codes((5, 3), torch.uint8, g)
    assert torch.equal(approx_matmul(a, b, lut.numpy().astype(np.int64)), approx_matmul_reference(a, b, lut))


# --------------------------------------------------------------------------------------------- conv
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


# ------------------------------------------------------------------------------------ batched candidates
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


# ---------------------------------------------------------------------------------------------- STE
def test_matmul_ste_value_and_gradient():
    g = torch.Generator().manual_seed(9)
    lut = random_table(g, 1000)
    a = codes((6, 11), torch.uint8, g).float().requires_grad_()
    b = codes((11, 4), torch.int8, g).float().requires_grad_()
    y = approx_matmul_ste(a, b, lut)
    assert torch.equal(y, approx_matmul(a.detach().to(torch.uint8), b.detach().to(torch.int8), lut).float())
    up = torch.randn(6, 4, generator=g)
    (y * up).sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ((a2 @ b2) * up).sum().backward()
    assert torch.allclose(a.grad, a2.grad) and torch.allclose(b.grad, b2.grad)


def test_conv_ste_value_and_gradient_with_pad_code():
    g = torch.Generator().manual_seed(10)
    lut = random_table(g, 1000)
    x = codes((2, 4, 6, 5), torch.uint8, g).float().requires_grad_()
    w = codes((4, 2, 3, 3), torch.int8, g).float().requires_grad_()
    y = approx_conv2d_ste(x, w, lut, 1, 1, (1, 2), 2, pad_code=3)
    xc, wc = x.detach().to(torch.uint8), w.detach().to(torch.int8)
    assert torch.equal(y, approx_conv2d(xc, wc, lut, 1, 1, (1, 2), 2, pad_code=3).float())
    up = torch.randn(y.shape, generator=g)
    (y * up).sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    exact = F.conv2d(F.pad(x2, (1, 1, 1, 1), value=3.0), w2, stride=1, dilation=(1, 2), groups=2)
    (exact * up).sum().backward()
    assert torch.allclose(x.grad, x2.grad) and torch.allclose(w.grad, w2.grad)


def test_ste_rejects_out_of_range_codes():
    with pytest.raises(KernelInputError, match=r"\[-128, 255\]"):
        approx_matmul_ste(torch.full((2, 2), 300.0), torch.ones(2, 2), exact_signed())


# ------------------------------------------------------------------------------------ low rank, dispatch
def test_lowrank_factors_are_exact_and_minimal():
    g = torch.Generator().manual_seed(11)
    for lut, rank in ((exact_signed(), 1), (drum_like(g), 1), (truncated_unsigned(), 7), (low_rank(g, 5), 5)):
        f = lowrank_factors(lut)
        assert f is not None and f.rank == rank == np.linalg.matrix_rank(lut.numpy().astype(np.float64))
        assert (f.u.astype(object).dot(f.v.astype(object)) == lut.numpy().astype(object) * f.denom).all()
    assert lowrank_factors(random_table(g)) is None
    # small factors keep the truncated multiplier's GEMMs in float32
    assert lowrank_factors(truncated_unsigned()).float_plan(576)[0] == torch.float32


def test_dispatcher_choices(monkeypatch):
    from dse.kernels import api

    g = torch.Generator().manual_seed(12)
    raced = []

    def fake_race(lut, k, n, groups, options, device):
        raced.append(dict(options))
        return sorted(options)[-1]  # lowrank over cpu, deterministic for the test

    monkeypatch.setattr(api, "_fastest", fake_race)
    luts = [random_table(g), exact_signed(), drum_like(g), low_rank(g, 2, bound=1), low_rank(g, 5)]
    assert chosen_backends(luts, 576) == ["cpu", "lowrank", "lowrank", "lowrank", "cpu"]
    # only candidates that can run the table enter the race: rank 1-2 tables, not the full-rank or rank-5 one
    assert raced == [{"cpu": 0, "lowrank": 1.0}, {"cpu": 0, "lowrank": 1.0}, {"cpu": 0, "lowrank": 2.0}]
    b = codes((16, 4), torch.int8, g)
    assert prepare_matmul(b, exact_signed()).backend == "lowrank"
    assert prepare_matmul(b, random_table(g)).backend == "cpu"


def test_race_measures_once_per_shape_and_options(monkeypatch):
    from dse.kernels import api

    monkeypatch.setattr(api, "_RACES", {})
    g = torch.Generator().manual_seed(15)
    lut = exact_signed()
    first = chosen_backends(lut, 100)
    assert first[0] in ("cpu", "lowrank") and len(api._RACES) == 1
    assert chosen_backends([lut, exact_signed()], 100) == first * 2 and len(api._RACES) == 1
    assert chosen_backends(lut, 101) and len(api._RACES) == 2
    w = codes((6, 2, 3, 3), torch.int8, g)
    p = prepare_conv2d(w, lut, groups=3)  # grouped: raced with G = 3
    assert p.backend in ("cpu", "lowrank") and any(key[3] == 3 for key in api._RACES)


# ------------------------------------------------------------------------------------------ bitplane
def _library_tables():
    from dse.multipliers.library import load_library
    from dse.quant import QuantFormat, effective_lut

    fmts = [QuantFormat.from_names("unsigned", s) for s in ("sign-magnitude", "affine")]
    lib = load_library()
    return {
        (m.name, f.weight_scheme): torch.as_tensor(effective_lut(m, f))
        for m in lib
        if not m.signed
        for f in fmts
    }


def test_bitplane_planes_rebuild_every_partial_product_table_exactly():
    found = 0
    for (name, scheme), lut in _library_tables().items():
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
    tables = [(k, t) for k, t in _library_tables().items() if bitplane_planes(t) is not None]
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


def test_dispatcher_races_bitplane_against_cpu_for_partial_product_tables(monkeypatch):
    from dse.kernels import api, bitplane

    lut = sign_magnitude(broken_array())
    g = torch.Generator().manual_seed(32)
    if bitplane_available():
        monkeypatch.setattr(api, "_RACES", {})
        choice = chosen_backends(lut, 150)[0]
        assert choice in ("bitplane", "cpu") and len(api._RACES) == 1  # measured once for (K, N, planes)
        assert chosen_backends(lut, 150) == [choice] and len(api._RACES) == 1
        assert chosen_backends(lut, 8) == ["cpu"]  # tiny K: never planed, never raced
        monkeypatch.setattr(api, "_fastest", lambda lut, k, n, groups, options, device: max(options, key=len))
        assert chosen_backends([lut, truncated_unsigned(), random_table(g)], 576) == [
            "bitplane",
            "bitplane",
            "cpu",
        ]
        # grouped convolutions (G > 1) are never planed: one GEMM call per group would not pay
        assert prepare_conv2d(codes((8, 1, 6, 6), torch.int8, g), lut, groups=8).backend == "cpu"
        assert prepare_conv2d(codes((8, 8, 6, 6), torch.int8, g), lut).backend == "bitplane"
    monkeypatch.setattr(
        bitplane, "available", lambda *device: False
    )  # a CPU whose oneDNN fails the self-check
    assert chosen_backends(lut, 576) == ["cpu"]
    with pytest.raises(KernelInputError, match="oneDNN"):
        approx_matmul(codes((2, 3), torch.uint8, g), codes((3, 2), torch.int8, g), lut, backend="bitplane")


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(13)
    lut = random_table(g)
    a, b = codes((4, 5), torch.uint8, g), codes((5, 3), torch.int8, g)
    cases = [
        (lambda: approx_matmul(a.float(), b, lut), "int8 or uint8"),
        (lambda: approx_matmul(a.to(torch.int16), b, lut), "int8 or uint8"),
        (lambda: approx_matmul(a, b[:4], lut), "inner sizes differ"),
        (lambda: approx_matmul(a[0], b, lut), "2 dimensions"),
        (lambda: approx_matmul(a, b, lut[:255]), r"\[256,256\]"),
        (lambda: approx_matmul(a, b, lut.float()), "integer table"),
        (lambda: approx_matmul(a, b, np.zeros((256, 256))), "integer"),
        (lambda: approx_matmul(a, b, torch.full((256, 256), 2**40)), "fit int32"),
        (lambda: approx_matmul(a, b, [[0]]), "lut"),
        (lambda: approx_matmul(a, b, lut, backend="gpu"), "backend"),
        (lambda: approx_matmul(a, b, lut, backend="triton"), "CUDA"),
        (lambda: approx_matmul(a, b, lut, backend="lowrank"), "rank"),
        (lambda: approx_matmul(a, b, lut, backend="bitplane"), "partial-product|oneDNN"),
        (lambda: approx_conv2d(codes((1, 3, 5, 5), torch.uint8, g), codes((4, 1, 3, 3), torch.int8, g), lut, groups=3), "divisible"),
        (lambda: approx_conv2d(codes((1, 4, 5, 5), torch.uint8, g), codes((4, 1, 3, 3), torch.int8, g), lut, groups=2), "channels"),
        (lambda: approx_conv2d(codes((1, 1, 2, 2), torch.uint8, g), codes((1, 1, 3, 3), torch.int8, g), lut), "smaller"),
        (lambda: approx_conv2d(codes((1, 1, 5, 5), torch.uint8, g), codes((1, 1, 3, 3), torch.int8, g), lut, pad_code=300), "pad_code"),
        (lambda: approx_conv2d(codes((1, 1, 5, 5), torch.uint8, g), codes((1, 1, 3, 3), torch.int8, g), lut, stride=0), "stride"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(KernelInputError, match=message):
            call()


def test_table_follows_the_operands_device():
    lut = exact_signed()
    moved = check_lut(lut, torch.device("meta"))  # a CUDA tensor with a CPU table works the same way
    assert moved.device.type == "meta" and moved.dtype == torch.int32


def test_import_and_auto_work_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, dse.kernels as k\n"
        "a = torch.ones(2, 3, dtype=torch.uint8); lut = torch.ones(256, 256, dtype=torch.int32)\n"
        "assert k.approx_matmul(a, a.t().contiguous(), lut).tolist() == [[3, 3], [3, 3]]\n"
        "try:\n    k.approx_matmul(a, a.t().contiguous(), lut, backend='triton')\n"
        "except k.KernelInputError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "triton is not installed" in out.stdout


def test_bench_cli_rejects_missing_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from click.testing import CliRunner

    from dse.cli import cli

    res = CliRunner().invoke(cli, ["bench", "kernels", "--device", "cuda"])
    assert res.exit_code == 2 and "CUDA is not available" in res.output


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


def test_bench_kernels_json_reports_every_backend(monkeypatch):
    import json

    from click.testing import CliRunner
    from dse.kernels import bench

    from dse.cli import cli

    tiny = [
        bench.Case("gemm", "gemm", {"m": 40, "k": 16, "n": 8}),
        bench.Case("dw", "conv", {"x": [1, 4, 6, 6], "w": [4, 1, 3, 3], "padding": 1, "groups": 4}),
    ]
    monkeypatch.setattr(bench, "cases", lambda quick, cuda=False: tiny)
    res = CliRunner().invoke(cli, ["bench", "kernels", "--quick", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["hardware"] and doc["device"] == "cpu"
    seen = {(r["case"], r["table"], r["backend"]) for r in doc["rows"]}
    for case in ("gemm", "dw"):
        assert {(case, "full-rank", b) for b in ("reference", "cpu", "auto")} <= seen
        assert (case, "rank<=8 (col-trunc 8)", "lowrank") in seen
    if bitplane_available():
        assert ("gemm", "rank<=8 (col-trunc 8)", "bitplane") in seen
    assert all(r["g_lut_mac_per_s"] > 0 and r["ratio_to_float32"] > 0 for r in doc["rows"])


def test_cpu_rows_split_among_threads_stay_exact():
    g = torch.Generator().manual_seed(16)
    lut = random_table(g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # rows split among two worker threads (the machine may have fewer cores)
        x = codes((3, 4, 20, 21), torch.uint8, g)
        w = codes((4, 2, 3, 3), torch.int8, g)
        out = approx_conv2d(x, w, lut, 1, 1, 1, 2, pad_code=1, backend="cpu")
        assert torch.get_num_threads() == 2  # restored after the split
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out, approx_conv2d_reference(x, w, lut, 1, 1, 1, 2, pad_code=1))


def test_bench_model_json_times_every_multiplier_against_quant():
    import json

    from click.testing import CliRunner

    from dse.cli import cli

    args = ["bench", "model", "--model", "digits_cnn", "--batch", "8", "--json"]
    res = CliRunner().invoke(cli, args + ["--multiplier", "exact_u8", "--multiplier", "drum4_u8"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == "digits_cnn" and doc["quant_seconds"] > 0 and doc["macs_per_sample"] > 0
    assert [r["multiplier"] for r in doc["rows"]] == ["exact_u8", "drum4_u8"]
    assert all(r["ratio_to_quant"] > 0 and r["ratio_to_float"] > 0 and r["backends"] for r in doc["rows"])
    bad = CliRunner().invoke(cli, ["bench", "model", "--model", "digits_cnn", "--multiplier", "nope_u8"])
    assert bad.exit_code == 2 and "unknown multiplier" in bad.output


def test_cpu_row_blocks_stay_exact(monkeypatch):
    from dse.kernels import cpu

    monkeypatch.setattr(cpu, "INDEX_BLOCK_ELEMENTS", 1000)  # blocks of 256 rows: several per call
    g = torch.Generator().manual_seed(34)
    lut = random_table(g)
    a, b = codes((700, 30), torch.uint8, g), codes((30, 5), torch.int8, g)
    assert torch.equal(approx_matmul(a, b, lut, backend="cpu"), approx_matmul_reference(a, b, lut))
    x, w = codes((2, 4, 17, 15), torch.uint8, g), codes((6, 2, 3, 3), torch.int8, g)
    out = approx_conv2d(x, w, lut, 1, 1, 1, 2, pad_code=3, backend="cpu")
    assert torch.equal(out, approx_conv2d_reference(x, w, lut, 1, 1, 1, 2, pad_code=3))
