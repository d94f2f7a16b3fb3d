"""`dse bench kernels` and `dse bench model`: every backend and multiplier reported, bad options refused."""

from __future__ import annotations

import pytest
import torch
from dse.kernels.bitplane import available as bitplane_available


def test_bench_cli_rejects_missing_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from click.testing import CliRunner

    from dse.cli import cli

    res = CliRunner().invoke(cli, ["bench", "kernels", "--device", "cuda"])
    assert res.exit_code == 2 and "CUDA is not available" in res.output


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
