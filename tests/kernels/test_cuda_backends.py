"""Every backend on CUDA tensors, bit-exact against the CPU reference (skipped without a GPU; CI has none —
the GPU sessions run these on the lent device: scripts/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch
from dse.kernels import (
    approx_conv2d,
    approx_conv2d_reference,
    approx_matmul,
    approx_matmul_multi,
    approx_matmul_reference,
    chosen_backends,
    lowrank_factors,
    prepare_matmul,
)
from dse.kernels.bench import tables
from kernel_tables import V, codes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def luts(g):
    bench = tables()
    return {
        "full-rank": bench["full-rank"],
        "rank7": bench["rank<=8 (col-trunc 8)"],
        "rank1": (V[:, None] * V[None, :]).to(torch.int32),
        "random-int32": torch.randint(-(2**30), 2**30, (256, 256), generator=g, dtype=torch.int32),
    }


def backends_for(lut):
    out = ["triton", "auto"]
    if lowrank_factors(lut) is not None:
        out.append("lowrank")
    return out


@pytest.mark.parametrize("shape", [(1, 1, 1), (70, 9, 65), (300, 577, 33), (4097, 144, 16), (33, 4608, 64)])
def test_every_backend_matmul_exact_on_cuda(shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(m * 7 + k)
    for name, lut in luts(g).items():
        for adt, bdt in ((torch.uint8, torch.int8), (torch.int8, torch.uint8)):
            a, b = codes((m, k), adt, g), codes((k, n), bdt, g)
            ref = approx_matmul_reference(a, b, lut)
            for backend in backends_for(lut):
                out = approx_matmul(a.to(CUDA), b.to(CUDA), lut.to(CUDA), backend=backend)
                assert out.device.type == "cuda" and out.dtype == torch.int32
                assert torch.equal(out.cpu(), ref), (name, backend, shape)


def test_extreme_tables_at_k_4608_on_cuda():
    k = 4608
    a = torch.full((3, k), 255, dtype=torch.uint8)
    b = torch.full((k, 2), 255, dtype=torch.uint8)
    for lut in (
        (V[:, None] * V[None, :]).to(torch.int32),
        torch.full((256, 256), 2**31 - 1, dtype=torch.int32),
    ):
        ref = approx_matmul_reference(a, b, lut)
        for backend in backends_for(lut):
            out = approx_matmul(a.to(CUDA), b.to(CUDA), lut.to(CUDA), backend=backend)
            assert torch.equal(out.cpu(), ref), backend


def test_convs_and_candidates_on_cuda():
    g = torch.Generator().manual_seed(5)
    lut = tables()["full-rank"]
    x = codes((3, 8, 11, 9), torch.uint8, g)
    for w_shape, stride, pad, dil, groups in [
        ((16, 8, 3, 3), 1, 1, 1, 1),
        ((8, 1, 3, 3), 2, 1, (1, 2), 8),
        ((12, 2, 5, 3), (2, 1), (2, 0), 1, 4),
    ]:
        w = codes(w_shape, torch.int8, g)
        ref = approx_conv2d_reference(x, w, lut, stride, pad, dil, groups, pad_code=7)
        for backend in ("triton", "auto"):
            out = approx_conv2d(
                x.to(CUDA), w.to(CUDA), lut, stride, pad, dil, groups, pad_code=7, backend=backend
            )
            assert torch.equal(out.cpu(), ref), (w_shape, backend)
    a = codes((200, 64), torch.uint8, g)
    cands = [(codes((64, n), torch.int8, g), t) for n, t in zip((8, 24, 5), luts(g).values())]
    outs = approx_matmul_multi(a.to(CUDA), [(b.to(CUDA), t.to(CUDA)) for b, t in cands])
    for out, (b, t) in zip(outs, cands):
        assert torch.equal(out.cpu(), approx_matmul_reference(a, b, t))


def test_bitplane_refuses_cuda_tensors_clearly():
    from dse.kernels import KernelInputError

    lut = tables()["rank<=8 (col-trunc 8)"]
    a, b = (
        torch.zeros(4, 40, dtype=torch.uint8, device=CUDA),
        torch.zeros(40, 8, dtype=torch.uint8, device=CUDA),
    )
    with pytest.raises(KernelInputError, match="CPU tensors"):
        approx_matmul(a, b, lut, backend="bitplane")


def test_auto_picks_a_gpu_backend_and_prepared_weights_stay_on_cuda():
    g = torch.Generator().manual_seed(9)
    lut = tables()["full-rank"]
    assert chosen_backends(lut, 576, CUDA) == ["triton"]
    b = codes((576, 64), torch.int8, g).to(CUDA)
    p = prepare_matmul(b, lut)  # a CPU table with CUDA weights: moved, not an error
    a = codes((5000, 576), torch.uint8, g)
    assert torch.equal(p(a.to(CUDA)).cpu(), approx_matmul_reference(a, b.cpu(), lut))
