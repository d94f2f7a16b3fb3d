"""The lowrank backend: exact integer factors, exact float GEMMs whatever the user's matmul precision."""

from __future__ import annotations

import numpy as np
import torch
from dse.kernels import approx_matmul, approx_matmul_reference, lowrank_factors
from kernel_tables import codes, drum_like, exact_signed, low_rank, random_table, truncated_unsigned


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
