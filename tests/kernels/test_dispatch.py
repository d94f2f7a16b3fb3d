"""backend='auto': which backends enter the race, that it is measured once per shape, and that it works
without triton."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from dse.kernels import KernelInputError, approx_matmul, chosen_backends, prepare_conv2d, prepare_matmul
from dse.kernels.bitplane import available as bitplane_available
from kernel_tables import (
    broken_array,
    codes,
    drum_like,
    exact_signed,
    low_rank,
    random_table,
    sign_magnitude,
    truncated_unsigned,
)


def test_dispatcher_choices(monkeypatch):
    from dse.kernels import dispatch

    g = torch.Generator().manual_seed(12)
    raced = []

    def fake_race(lut, k, n, groups, options, device):
        raced.append(dict(options))
        return sorted(options)[-1]  # lowrank over cpu, deterministic for the test

    monkeypatch.setattr(dispatch, "_fastest", fake_race)
    luts = [random_table(g), exact_signed(), drum_like(g), low_rank(g, 2, bound=1), low_rank(g, 5)]
    assert chosen_backends(luts, 576) == ["cpu", "lowrank", "lowrank", "lowrank", "cpu"]
    # only candidates that can run the table enter the race: rank 1-2 tables, not the full-rank or rank-5 one
    assert raced == [{"cpu": 0, "lowrank": 1.0}, {"cpu": 0, "lowrank": 1.0}, {"cpu": 0, "lowrank": 2.0}]
    b = codes((16, 4), torch.int8, g)
    assert prepare_matmul(b, exact_signed()).backend == "lowrank"
    assert prepare_matmul(b, random_table(g)).backend == "cpu"


def test_race_measures_once_per_shape_and_options(monkeypatch):
    from dse.kernels import dispatch

    monkeypatch.setattr(dispatch, "_RACES", {})
    g = torch.Generator().manual_seed(15)
    lut = exact_signed()
    first = chosen_backends(lut, 100)
    assert first[0] in ("cpu", "lowrank") and len(dispatch._RACES) == 1
    assert chosen_backends([lut, exact_signed()], 100) == first * 2 and len(dispatch._RACES) == 1
    assert chosen_backends(lut, 101) and len(dispatch._RACES) == 2
    w = codes((6, 2, 3, 3), torch.int8, g)
    p = prepare_conv2d(w, lut, groups=3)  # grouped: raced with G = 3
    assert p.backend in ("cpu", "lowrank") and any(key[3] == 3 for key in dispatch._RACES)


def test_dispatcher_races_bitplane_against_cpu_for_partial_product_tables(monkeypatch):
    from dse.kernels import bitplane, dispatch

    lut = sign_magnitude(broken_array())
    g = torch.Generator().manual_seed(32)
    if bitplane_available():
        monkeypatch.setattr(dispatch, "_RACES", {})
        choice = chosen_backends(lut, 150)[0]
        assert choice in ("bitplane", "cpu") and len(dispatch._RACES) == 1  # measured once for (K, N, planes)
        assert chosen_backends(lut, 150) == [choice] and len(dispatch._RACES) == 1
        assert chosen_backends(lut, 8) == ["cpu"]  # tiny K: never planed, never raced
        monkeypatch.setattr(
            dispatch, "_fastest", lambda lut, k, n, groups, options, device: max(options, key=len)
        )
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
