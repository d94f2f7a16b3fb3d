"""Tables and operands the kernel tests share: multiplier-like tables of every structure the backends
specialise on (full rank, low rank, partial products, sign-magnitude), random codes, and which backends can
run a table here."""

from __future__ import annotations

import torch
from dse.kernels import bitplane_planes, lowrank_factors
from dse.kernels.bitplane import available as bitplane_available

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


def library_tables() -> dict[tuple[str, str], torch.Tensor]:
    """The effective table of every unsigned library multiplier under both unsigned weight schemes."""
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


# convolution cases of the im2col-free paths' tests: (channels, kernel, stride, padding, dilation, pad code)
CONV_SHAPES = [
    (3, 3, 1, 1, 1, 0),
    (16, 3, 2, 1, 1, 0),
    (5, 3, 1, 1, 1, 7),
    (4, 1, 2, 0, 1, 0),
    (40, 5, 1, 2, 2, 3),
]
