"""Bad operands, tables and backends raise KernelInputError with a clear message; tables follow the operands."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dse.kernels import KernelInputError, approx_conv2d, approx_matmul
from dse.kernels.checks import check_lut
from kernel_tables import codes, exact_signed, random_table


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
