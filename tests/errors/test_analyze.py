"""`dse analyze` end to end on a tiny digits run (tiny budgets), and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dse.cli import cli

pytestmark = pytest.mark.slow


def _invoke(args):
    return CliRunner().invoke(cli, args, env={"DSE_NO_PROGRESS": "1"})


@pytest.fixture(scope="module")
def run_dir(tiny_digits_run: Path) -> Path:
    return tiny_digits_run


def test_analyze_end_to_end(run_dir: Path):
    res = _invoke(["analyze", str(run_dir), "--json", "--images", "100", "--layer-images", "60"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for key in (
        "sigma_median_rel_error",
        "sigma_median_rel_error_by_predictor",
        "distortion_accuracy_spearman",
        "distortion_logit_spearman",
    ):
        assert key in doc
    assert set(doc["sigma_median_rel_error_by_predictor"]) == {"sampled", "weight-aware", "p3"}
    assert doc["sigma_median_rel_error"] == doc["sigma_median_rel_error_by_predictor"]["sampled"]
    assert doc["sigma_median_rel_error"] < 0.1  # the sampled predictor on images it never saw
    assert len(doc["network"]) == 6 and len(doc["layers"]) == 4
    exact = next(n for n in doc["network"] if n["multiplier"] == "exact_u8")
    assert exact["logit_distortion"] == 0 and exact["accuracy_drop"] == 0
    assert doc["distortion_logit_spearman"] > 0.8
    # P1: closed-form distortion per layer × multiplier, its Spearman against the measured one
    p1 = doc["p1_distortion_spearman"]
    assert set(p1["layers"]) == {layer["name"] for layer in doc["layers"]}
    assert p1["overall"] > 0.8, p1
    assert set(doc["distortion_spearman_by_predictor"]) == {"sampled", "weight-aware", "p3"}
    assert "p1" in doc["prediction_seconds"]
    for layer in doc["layers"]:
        assert layer["p1_distortion_spearman"] == p1["layers"][layer["name"]]
        for e in layer["multipliers"]:
            assert (e["p1_distortion"] == 0) == (e["multiplier"] == "exact_u8"), e
    # with and without bias compensation (corrections from training images, measured on validation ones)
    approx = [e for layer in doc["layers"] for e in layer["multipliers"] if e["multiplier"] != "exact_u8"]
    exact_entries = [
        e for layer in doc["layers"] for e in layer["multipliers"] if e["multiplier"] == "exact_u8"
    ]
    assert all(e["measured_distortion_compensated"] == 0 for e in exact_entries)
    assert sum(abs(e["measured_mean_compensated"]) for e in approx) < 0.5 * sum(
        abs(e["measured_mean"]) for e in approx
    )
    assert set(doc["compensation"]["distortion_ratio_compensated"]) == {e["multiplier"] for e in approx}
    sub = _invoke(
        [
            "analyze",
            str(run_dir),
            "--json",
            "--multipliers",
            "trunc*",
            "--images",
            "50",
            "--layer-images",
            "30",
        ]
    )
    assert sub.exit_code == 0, sub.output
    assert [n["multiplier"] for n in json.loads(sub.stdout)["network"]] == ["trunc6_u8", "trunc8_u8"]


def test_analyze_bad_input(run_dir: Path, tmp_path: Path):
    res = _invoke(["analyze", str(tmp_path)])
    assert res.exit_code == 2 and "dse prepare" in res.output  # says which command makes the stage
    res = _invoke(["analyze", str(run_dir), "--multipliers", "nothing_like_this*"])
    assert res.exit_code == 2 and "matches nothing" in res.output


def test_library_in_another_format_is_refused(run_dir: Path):
    from dse.errors.predict import check_formats
    from dse.multipliers.library import load_library
    from dse.quant import QuantFormat
    from dse.util import UserError

    with pytest.raises(UserError, match="operand format is unsigned"):
        check_formats([load_library().get("exact_s8")], QuantFormat(False, "sign-magnitude", True))
