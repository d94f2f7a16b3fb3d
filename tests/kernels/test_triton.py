"""The Triton kernel, bit-exact against the reference: on CUDA when present, else under TRITON_INTERPRET=1."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from dse.kernels import (  # noqa: E402
    approx_conv2d,
    approx_conv2d_multi,
    approx_conv2d_reference,
    approx_matmul,
    approx_matmul_multi,
    approx_matmul_reference,
)
from kernel_tables import codes  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.fixture
def device(monkeypatch):
    if torch.cuda.is_available():
        return torch.device("cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return torch.device("cpu")


def test_triton_matmul_matches_reference(device):
    g = torch.Generator().manual_seed(0)
    big = torch.randint(-(2**30), 2**30, (256, 256), generator=g, dtype=torch.int32)  # int32 sums wrap
    asym = torch.randint(-70000, 70001, (256, 256), generator=g, dtype=torch.int32)
    for (m, k, n), lut in (((1, 1, 1), asym), ((70, 9, 65), asym), ((5, 33, 3), big)):  # tiles cut at 64
        a = codes((m, k), torch.int8, g)
        b = codes((k, n), torch.uint8, g)
        ref = approx_matmul_reference(a, b, lut)
        out = approx_matmul(a.to(device), b.to(device), lut, backend="triton")
        assert out.dtype == torch.int32 and torch.equal(out.cpu(), ref)


def test_triton_grouped_conv_and_multi_match_reference(device):
    g = torch.Generator().manual_seed(1)
    lut = torch.randint(-70000, 70001, (256, 256), generator=g, dtype=torch.int32)
    lut2 = torch.randint(-500, 501, (256, 256), generator=g, dtype=torch.int32)
    x = codes((2, 4, 5, 6), torch.uint8, g)
    w = codes((4, 1, 3, 3), torch.int8, g)  # depthwise
    ref = approx_conv2d_reference(x, w, lut, 2, 1, (1, 2), 4, pad_code=9)
    out = approx_conv2d(x.to(device), w.to(device), lut, 2, 1, (1, 2), 4, pad_code=9, backend="triton")
    assert torch.equal(out.cpu(), ref)
    w2 = codes((8, 1, 3, 3), torch.int8, g)
    outs = approx_conv2d_multi(
        x.to(device), [(w.to(device), lut), (w2.to(device), lut2)], 1, 1, 1, 4, backend="triton"
    )
    assert torch.equal(outs[1].cpu(), approx_conv2d_reference(x, w2, lut2, 1, 1, 1, 4))
    a = codes((7, 6), torch.uint8, g)
    bs = [codes((6, n), torch.int8, g) for n in (2, 5)]
    outs = approx_matmul_multi(
        a.to(device), [(bs[0].to(device), lut), (bs[1].to(device), lut2)], backend="triton"
    )
    assert torch.equal(outs[0].cpu(), approx_matmul_reference(a, bs[0], lut))
    assert torch.equal(outs[1].cpu(), approx_matmul_reference(a, bs[1], lut2))


def test_triton_tile_configs_split_k_and_table_formats_match_reference(device):
    """Every tile shape, k-major or row-major codes, unrolling and split-K (int32 atomics) on both table
    formats: 16-bit residuals (real multipliers) and plain int32 entries (tables whose residuals do not fit)."""
    from dse.kernels.triton_common import Config
    from dse.kernels.triton_gemm import triton_lut_matmul
    from dse.kernels.triton_tables import build_triton_tables, linear_residual

    g = torch.Generator().manual_seed(2)
    v = torch.arange(256)
    evolved = (v[:, None] * v[None, :] + torch.randint(-300, 301, (256, 256), generator=g)).to(torch.int32)
    wide = torch.randint(-(2**30), 2**30, (256, 256), generator=g, dtype=torch.int32)
    assert linear_residual(evolved) is not None and linear_residual(wide) is None
    for lut in (evolved, wide):
        a = codes((2, 37, 150), torch.uint8, g)
        b = codes((2, 150, 20), torch.uint8, g)
        ref = torch.stack([approx_matmul_reference(a[i], b[i], lut) for i in range(2)])
        tables = build_triton_tables([(b.to(device), lut.to(device))])
        assert (tables.t.dtype == torch.int16) == (lut is evolved)
        for cfg in (Config(16, 16, 2), Config(32, 32, 4, 2, True, 3), Config(64, 16, 2, 3, False, 7)):
            assert torch.equal(triton_lut_matmul(a.to(device), tables, cfg).cpu(), ref), cfg


def test_triton_implicit_im2col_conv_matches_reference(device):
    """Groups of >= DIRECT_CONV_MIN_N output channels take the implicit-im2col kernel (codes gathered from x,
    output written in NCHW order): plain, grouped, strided, dilated, padded with a non-zero code, candidates."""
    from dse.kernels.plans import DIRECT_CONV_MIN_N

    g = torch.Generator().manual_seed(3)
    v = torch.arange(256)
    lut = (v[:, None] * v[None, :] + torch.randint(-300, 301, (256, 256), generator=g)).to(torch.int32)
    wide = torch.randint(-(2**30), 2**30, (256, 256), generator=g, dtype=torch.int32)
    x = codes((2, 4, 7, 6), torch.uint8, g)
    for w_shape, stride, pad, dil, groups in [
        ((8, 4, 3, 3), 1, 1, 1, 1),
        ((16, 2, 3, 2), (2, 1), (1, 2), (2, 1), 2),
    ]:
        assert w_shape[0] // groups >= DIRECT_CONV_MIN_N
        w = codes(w_shape, torch.int8, g)
        for t in (lut, wide):
            ref = approx_conv2d_reference(x, w, t, stride, pad, dil, groups, pad_code=200)
            out = approx_conv2d(
                x.to(device), w.to(device), t, stride, pad, dil, groups, pad_code=200, backend="triton"
            )
            assert torch.equal(out.cpu(), ref), (w_shape, t is wide)
    w1, w2 = codes((8, 4, 3, 3), torch.int8, g), codes((12, 4, 3, 3), torch.int8, g)
    outs = approx_conv2d_multi(
        x.to(device), [(w1.to(device), lut), (w2.to(device), lut)], 1, 1, 1, 1, backend="triton"
    )
    assert torch.equal(outs[0].cpu(), approx_conv2d_reference(x, w1, lut, 1, 1))
    assert torch.equal(outs[1].cpu(), approx_conv2d_reference(x, w2, lut, 1, 1))


def test_interpreter_runs_kernels_imported_without_triton_interpret():
    """CPU tensors run both kernels under Triton's interpreter even when @triton.jit saw no TRITON_INTERPRET=1
    at import (as when another test imported them first): their jit helpers are interpreted too."""
    code = (
        "import os, torch\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "import dse.kernels.triton_conv, dse.kernels.triton_gemm\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "import dse.kernels as k\n"
        "g = torch.Generator().manual_seed(4)\n"
        "lut = torch.randint(-70000, 70001, (256, 256), generator=g, dtype=torch.int32)\n"
        "a = torch.randint(0, 256, (5, 7), generator=g).to(torch.uint8)\n"
        "b = torch.randint(0, 256, (7, 9), generator=g).to(torch.uint8)\n"
        "assert torch.equal(k.approx_matmul(a, b, lut, backend='triton'), k.approx_matmul_reference(a, b, lut))\n"
        "x = torch.randint(0, 256, (1, 2, 5, 4), generator=g).to(torch.uint8)\n"
        "w = torch.randint(0, 256, (8, 2, 3, 3), generator=g).to(torch.uint8)\n"
        "out = k.approx_conv2d(x, w, lut, 1, 1, pad_code=3, backend='triton')\n"
        "assert torch.equal(out, k.approx_conv2d_reference(x, w, lut, 1, 1, pad_code=3))\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_kernels_compile_for_an_h100_without_a_gpu():
    """Both kernels go through Triton's whole GPU pipeline (to an sm_90 cubin, no device needed), which the
    interpreter skips: residual tables, masked columns, unrolling and split-K atomics all compile."""
    code = """
import os
os.environ.pop("TRITON_INTERPRET", None)
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from dse.kernels.triton_conv import lut_conv_kernel
from dse.kernels.triton_gemm import lut_gemm_kernel

meta = {"BLOCK_M": 64, "BLOCK_N": 64, "LINEAR": True, "EVEN_N": False, "UNROLL": 2, "SPLIT_K": 4}
pointers = {"a_ptr": "*u8", "x_ptr": "*u8", "t_ptr": "*i16", "c_ptr": "*i32", "bias_ptr": "*i32", "out_ptr": "*i32"}
for kernel, extra in ((lut_gemm_kernel, {}), (lut_conv_kernel, {"KH": 3, "KW": 3})):
    constants = {**meta, **extra}
    signature = {n: "constexpr" if n in constants else pointers.get(n, "i32") for n in kernel.arg_names}
    binary = compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32))
    assert binary.asm["cubin"], kernel
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
