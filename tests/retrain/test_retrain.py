"""Retraining end to end on a tiny prepared digits run: every reported accuracy is a behavioural
simulation of the saved network, statistics are reused, the CLI round trip and the cross matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dse.cli import cli

pytestmark = pytest.mark.slow

ASSIGNMENT = {"conv2": "bam_h4_v8_u8", "fc1": "trunc8_u8"}

STUDY = """
name = "tiny_digits"
search_space = "unsigned_sm"
[model]
name = "digits_cnn"
[data]
name = "digits"
train_size = 200
val_size = 100
test_size = 97
[train]
epochs = 3
qat_epochs = 1
batch_size = 64
lr = 0.005
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from dse.prepare import prepare
    from dse.study import load_study

    root = tmp_path_factory.mktemp("retrain")
    (root / "tiny.toml").write_text(STUDY)
    out = root / "run"
    prepare(load_study(root / "tiny.toml"), out=out, device="cpu")
    return out


def _lut_accuracy(run_dir: Path, checkpoint: Path | None, assignment: dict[str, str]) -> float:
    """An independent behavioural evaluation: fresh prepared model, weights from the checkpoint."""
    from dse.nn import assign, set_mode
    from dse.prepare import load_prepared
    from dse.train import evaluate_accuracy

    prepared = load_prepared(run_dir, device="cpu")
    model = prepared.model
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    set_mode(model, "lut")
    assign(model, {k: prepared.library.get(v) for k, v in assignment.items()})
    return evaluate_accuracy(model, prepared.splits.val, device="cpu")


def test_reported_accuracies_are_behavioural_simulations_of_the_saved_network(run_dir):
    from dse.retrain.loop import retrain

    res = retrain(run_dir, ASSIGNMENT, "errmodel", epochs=1, calibration_samples=128, rest="exact")
    ckpt = Path(res.checkpoint)
    assert ckpt.exists() and ckpt.parent == run_dir / "retrain" / res.config_hash
    assert (ckpt.parent / "errstats.pt").exists() and res.stats_seconds > 0
    assert res.accuracy_before == _lut_accuracy(run_dir, None, ASSIGNMENT)
    assert res.accuracy_after == _lut_accuracy(run_dir, ckpt, ASSIGNMENT)
    assert res.seconds_per_epoch > 0 and res.cpu_seconds_per_epoch > 0 and 0 <= res.accuracy_after <= 1
    assert res.refresh_stats
    saved = json.loads((ckpt.parent / "errmodel.json").read_text())
    assert saved["accuracy_after"] == res.accuracy_after
    # a second method on the same configuration reuses the stored statistics
    res2 = retrain(run_dir, ASSIGNMENT, "awgn", epochs=1, calibration_samples=128, rest="exact")
    assert res2.config_hash == res.config_hash and res2.stats_seconds == 0.0
    assert res2.accuracy_after == _lut_accuracy(run_dir, Path(res2.checkpoint), ASSIGNMENT)


def test_errmodel_statistics_match_the_simulated_error(run_dir):
    """μ_ε, σ_ε per neuron are the moments of (lut-mode output − quant-mode output) of that neuron."""
    from dse.hwconfig import resolve_assignment
    from dse.nn import approx_layers, assign, set_mode
    from dse.retrain.loop import load_run
    from dse.retrain.statistics import measure_error_stats
    from dse.train import dataset_tensors

    prepared = load_run(run_dir)
    model = prepared.model
    mults = resolve_assignment({"fc1": "trunc8_u8"}, prepared)
    stats = measure_error_stats(prepared, model, mults, samples=64)
    assert set(stats) == {"fc1"} and stats["fc1"].samples == 64
    assert stats["fc1"].mean_err.shape == (64,)  # one per output unit of fc1
    x = dataset_tensors(prepared.splits.train)[0][:64]
    outs = []
    handle = approx_layers(model)["fc1"].register_forward_hook(lambda mod, args, out: outs.append(out))
    with torch.no_grad():
        set_mode(model, "quant")
        model(x)
        set_mode(model, "lut")
        assign(model, mults)
        model(x)
    handle.remove()
    err = (outs[1] - outs[0]).double()
    assert float(err.abs().max()) > 0
    assert torch.allclose(stats["fc1"].mean_err.double(), err.mean(0), atol=1e-5)
    assert torch.allclose(stats["fc1"].std_err.double(), err.std(0, unbiased=False), atol=1e-4)


def test_every_method_runs_and_cli_round_trip(run_dir, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(ASSIGNMENT))
    runner = CliRunner()
    for method in ("behavioral", "multiplicative", "agn"):
        args = [
            "retrain",
            str(run_dir),
            "--config",
            str(cfg),
            "--method",
            method,
            "--epochs",
            "1",
            "--rest",
            "exact",
        ]
        args += ["--calibration-samples", "128", "--json"]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["method"] == method
        for key in ("accuracy_before", "accuracy_after", "seconds_per_epoch"):
            assert isinstance(out[key], float)
        assert out["accuracy_after"] == _lut_accuracy(run_dir, Path(out["checkpoint"]), ASSIGNMENT)


def test_cross_matrix(run_dir):
    from dse.retrain.compare import cross_evaluate

    out = cross_evaluate(run_dir, ["trunc9_u8"], epochs=1, calibration_samples=64)
    assert out.rows == ["none", "trunc9_u8"] and out.columns == ["exact_u8", "trunc9_u8"]
    everywhere = {name: "trunc9_u8" for name in ("conv1", "conv2", "fc1", "fc2")}
    assert out.accuracy[0][1] == _lut_accuracy(run_dir, None, everywhere)
    assert out.accuracy[0][0] == _lut_accuracy(run_dir, None, {})


def test_a_compensated_assignment_is_retrained_with_its_correction_recomputed(run_dir):
    from dse.nn import approx_layers
    from dse.prepare import load_prepared
    from dse.retrain.loop import retrain
    from dse.simulation import ensure_calibration, simulate_accuracy

    compensated = {"conv2": "bam_h4_v8_u8+bc", "fc1": "trunc8_u8+wt"}
    res = retrain(run_dir, compensated, "errmodel", epochs=1, calibration_samples=128, rest="exact")
    plain = retrain(run_dir, ASSIGNMENT, "errmodel", epochs=1, calibration_samples=128, rest="exact")
    assert res.config_hash != plain.config_hash  # its own statistics and checkpoint
    assert {k: v for k, v in res.assignment.items() if k in compensated} == compensated

    def measured(checkpoint: Path | None) -> tuple[float, torch.Tensor]:
        prepared = load_prepared(run_dir, device="cpu")
        if checkpoint is not None:
            blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
            prepared.model.load_state_dict(blob["state_dict"])
        ensure_calibration(prepared)  # calibrated on the weights it runs with
        mults = {k: prepared.library.get(v.split("+")[0]) for k, v in compensated.items()}
        remedies = {"conv2": "bias", "fc1": "weights"}
        acc = simulate_accuracy(prepared, mults, remedies=remedies)
        return acc, approx_layers(prepared.model)["conv2"].bias_correction(mults["conv2"])

    before, corr_before = measured(None)
    after, corr_after = measured(Path(res.checkpoint))
    assert res.accuracy_before == before and res.accuracy_after == after
    assert not torch.equal(corr_before, corr_after)  # the retrained weights get their own correction
