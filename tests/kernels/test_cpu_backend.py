"""The cpu backend's memory and threading schemes stay exact: streamed tables, rows split among threads,
row blocks."""

from __future__ import annotations

import torch
from dse.kernels import (
    approx_conv2d,
    approx_conv2d_reference,
    approx_matmul,
    approx_matmul_reference,
    prepare_matmul,
)
from kernel_tables import codes, random_table


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
