"""`dse agn` end to end on a tiny digits run (tiny budgets), and its bad inputs."""

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


def test_agn_end_to_end_and_cached(run_dir: Path):
    res = _invoke(["agn", str(run_dir), "--lambda", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (r,) = doc["results"]
    layers = ["conv1", "conv2", "fc1", "fc2"]
    assert r["lam"] == 0.5 and sorted(r["assignment"]) == sorted(layers)
    assert set(r["sigma_rel"]) == set(layers) and all(v >= 0 for v in r["sigma_rel"].values())
    assert 0 < r["energy_rel"] <= 1 and 0 <= r["accuracy"] <= 1
    assert set(r["alternatives"]) == {"sigma"}
    # the tolerance is |σ_l| times the exact output std the predictions hold
    pred = json.loads((run_dir / "profiles" / "predictions.json").read_text())["sampled"]
    for i, name in enumerate(pred["layers"]):
        assert r["tolerance"][name] == pytest.approx(r["sigma_rel"][name] * pred["output_std"][i])
    assert (run_dir / "agn" / "lambda_0.5.json").is_file() and (run_dir / "agn" / "result.json").is_file()
    again = _invoke(["agn", str(run_dir), "--lambda", "0.5", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["results"] == doc["results"]  # from the cache


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lambda", "-0.1"], "expected values ≥ 0"),
        (["--sigma-max", "0"], "sigma_max"),
    ],
)
def test_agn_bad_settings(run_dir: Path, args, message):
    res = _invoke(["agn", str(run_dir), *args])
    assert res.exit_code == 2 and message in res.output
