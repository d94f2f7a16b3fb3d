"""`dse evaluate`: a configuration exported from a run re-measures to exactly the accuracy the search's
simulator recorded; tampered tables, foreign layers and schema errors are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from dse.cli import cli

TINY_STUDY = """
name = "tiny_digits"
search_space = "unsigned_sm"
[model]
name = "digits_cnn"
[data]
name = "digits"
val_size = 300
test_size = 100
train_size = 600
seed = 0
[train]
epochs = 2
qat_epochs = 1
batch_size = 64
lr = 0.01
seed = 0
"""


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A prepared tiny digits run whose summary records accuracies measured by the search's own simulator
    (`dse.search.model_sim.ModelSimulator`, as `dse search` does)."""
    from dse.prepare import load_prepared, prepare
    from dse.search.model_sim import ModelSimulator
    from dse.search.setup import build_problem
    from dse.simulation import ensure_calibration
    from dse.study import load_study
    from dse.util import atomic_write_json

    root = tmp_path_factory.mktemp("evaluate")
    (root / "tiny.toml").write_text(TINY_STUDY)
    run_dir = root / "run"
    prepare(load_study(root / "tiny.toml"), out=run_dir, device="cpu")
    prepared = load_prepared(run_dir, device="cpu")
    problem, mults = build_problem(prepared)
    approx = [m for m in problem.choices[0] if m != problem.exact]
    approx = sorted(approx, key=lambda m: -problem.energies[m])
    genomes = [
        tuple(problem.exact for _ in problem.layers),
        tuple(approx[len(approx) // 3] for _ in problem.layers),
        tuple(approx[(i * 5) % len(approx)] for i in range(len(problem.layers))),
    ]
    # trials 3 and 4: the remedies (the search's "NAME+bc" / "NAME+wt" names; same energy as NAME)
    trunc = next(m for m in approx if m.startswith("trunc") and int(m[5:].split("_")[0]) >= 6)
    genomes.append(tuple(f"{trunc}+bc" for _ in problem.layers))
    genomes.append(tuple(f"{m}+wt" if i % 2 else f"{m}+bc" for i, m in enumerate(genomes[2])))
    mults.update({v: mults[v[:-3]] for g in genomes[3:] for v in g})
    ensure_calibration(prepared)
    sim = ModelSimulator(prepared, problem, mults)
    points = []
    for trial, g in enumerate(genomes):
        points.append(
            {
                "trial": trial,
                "energy_rel": problem.energy_rel(tuple(m.split("+")[0] for m in g)),
                "accuracy": sim.accuracy(g, "val"),
                "test_accuracy": sim.accuracy(g, "test"),
                "assignment": problem.assignment(g),
                "predicted_accuracy": None,
                "origin": "test",
            }
        )
    layers = [
        {
            "name": i.name,
            "kind": i.kind,
            "macs": int(i.macs),
            "fan_in": int(i.fan_in),
            "weight_shape": list(i.weight_shape),
        }
        for i in prepared.layers
    ]
    summary = {
        "schema_version": 1,
        "study": "tiny_digits",
        "quant_accuracy": prepared.quant_accuracy,
        "quant_test_accuracy": None,
        "evaluations": len(points),
        "layers": layers,
        "points": points,
        "front": points,
        "baselines": {},
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return run_dir, summary


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def export(run_dir, trial, out):
    result = invoke("export", run_dir, "--trial", trial, "-o", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("trial", [0, 1, 2])
def test_evaluate_reproduces_recorded_accuracy_exactly(recorded_run, tmp_path, trial):
    run_dir, summary = recorded_run
    cfg_path = tmp_path / "cfg.json"
    cfg = export(run_dir, trial, cfg_path)
    assert cfg["quantization"]["format"] == "unsigned"
    assert all(layer["quant"] is not None and layer["quant"]["weight"]["scale"] for layer in cfg["layers"])
    result = invoke("evaluate", cfg_path, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    point = summary["points"][trial]
    assert out["accuracy"] == point["accuracy"]  # bit-exact simulation: equal, not approximately equal
    assert out["matches_recorded"] is True
    assert out["energy_rel"] == pytest.approx(point["energy_rel"], abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("trial", [3, 4])
def test_evaluate_reproduces_a_compensated_configuration_exactly(recorded_run, tmp_path, trial):
    from dse.nn import approx_layers
    from dse.prepare import load_prepared

    run_dir, summary = recorded_run
    cfg_path = tmp_path / "cfg.json"
    cfg = export(run_dir, trial, cfg_path)
    assert cfg["schema_version"] == 3
    point = summary["points"][trial]
    layers = approx_layers(load_prepared(run_dir).model)
    for entry in cfg["layers"]:
        comp = entry["compensation"]
        remedy = "bias" if point["assignment"][entry["name"]].endswith("+bc") else "weights"
        assert comp["remedy"] == remedy and "+" not in entry["multiplier"]
        layer = layers[entry["name"]]
        if remedy == "bias":  # one integer per channel; the float bias carries exactly that correction
            assert len(comp["acc_correction"]) == len(comp["float_bias"]) == layer.out_channels
            scale = layer.output_scale.double()
            bias = layer.bias.detach().double()
            expected = bias - torch.tensor(comp["acc_correction"], dtype=torch.float64) * scale
            assert torch.allclose(torch.tensor(comp["float_bias"], dtype=torch.float64), expected)
            assert any(comp["acc_correction"])  # a truncated table's error does not vanish
        else:
            assert len(comp["weight_map"]) == 256
    result = invoke("evaluate", cfg_path, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # stderr: the calibration's log line
    assert out["accuracy"] == point["accuracy"] and out["matches_recorded"] is True
    assert out["assignment"] == point["assignment"]

    wrong = json.loads(json.dumps(cfg))
    entry = next(e for e in wrong["layers"] if e["compensation"]["remedy"] == "bias")
    entry["compensation"]["acc_correction"] = entry["compensation"]["acc_correction"][:-1]
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(wrong))
    line = one_line_error(invoke("evaluate", path))
    assert "acc_correction" in line and "output channels" in line
    entry["compensation"]["acc_correction"] = [
        v + 1 for v in cfg["layers"][wrong["layers"].index(entry)]["compensation"]["acc_correction"]
    ]
    path.write_text(json.dumps(wrong))
    result = invoke("evaluate", path)
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "does not match" in result.stderr.splitlines()[-1]


@pytest.mark.slow
def test_a_version_2_configuration_is_still_read(recorded_run, tmp_path):
    run_dir, summary = recorded_run
    cfg = export(run_dir, 1, tmp_path / "cfg.json")
    for entry in cfg["layers"]:
        assert entry.pop("compensation") is None
    cfg["schema_version"] = 2
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(cfg))
    out = json.loads(invoke("evaluate", path, "--json").stdout)
    assert out["accuracy"] == summary["points"][1]["accuracy"]


@pytest.mark.slow
def test_evaluate_plain_assignment_and_test_split(recorded_run, tmp_path):
    run_dir, summary = recorded_run
    point = summary["points"][2]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(point["assignment"]))
    line = one_line_error(invoke("evaluate", plain))
    assert "--run" in line
    result = invoke("evaluate", plain, "--run", run_dir, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["accuracy"] == point["test_accuracy"] and out["matches_recorded"] is True


@pytest.mark.slow
def test_evaluate_refuses_bad_configs(recorded_run, tmp_path):
    run_dir, _ = recorded_run
    cfg = export(run_dir, 1, tmp_path / "cfg.json")

    tampered = json.loads(json.dumps(cfg))
    tampered["layers"][1]["lut_sha256"] = "0" * 64
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(tampered))
    line = one_line_error(invoke("evaluate", path))
    assert "layers[1].lut_sha256" in line and "does not match" in line

    foreign = json.loads(json.dumps(cfg))
    foreign["layers"][0]["name"] = "not_a_layer"
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(foreign))
    line = one_line_error(invoke("evaluate", path))
    assert "not_a_layer" in line and "do not match the model" in line

    fewer = json.loads(json.dumps(cfg))
    fewer["layers"] = fewer["layers"][:-1]
    path = tmp_path / "fewer.json"
    path.write_text(json.dumps(fewer))
    line = one_line_error(invoke("evaluate", path))
    assert "missing" in line and cfg["layers"][-1]["name"] in line

    broken = json.loads(json.dumps(cfg))
    broken["totals"]["accuracy"] = "high"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    line = one_line_error(invoke("evaluate", path))
    assert "totals.accuracy" in line

    unknown = json.loads(json.dumps(cfg))
    unknown["layers"][0]["multiplier"] = "no_such_multiplier"
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps(unknown))
    line = one_line_error(invoke("evaluate", path))
    assert "layers[0].multiplier" in line and "no_such_multiplier" in line

    (tmp_path / "notjson.json").write_text("{")
    one_line_error(invoke("evaluate", tmp_path / "notjson.json"))


@pytest.mark.slow
def test_partial_plain_assignment_names_the_missing_layers_or_runs_them_exact_with_rest(
    recorded_run, tmp_path
):
    run_dir, summary = recorded_run
    names = [layer["name"] for layer in summary["layers"]]
    first = names[0]
    point = next(p for p in summary["points"] if p["assignment"][first] != "exact_u8")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({first: point["assignment"][first]}))
    line = one_line_error(invoke("evaluate", partial, "--run", run_dir))
    assert all(n in line for n in names[1:]) and "--rest exact" in line

    result = invoke("evaluate", partial, "--run", run_dir, "--rest", "exact", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["exact_rest"] == names[1:]
    full = tmp_path / "full.json"
    full.write_text(json.dumps({n: point["assignment"][first] if n == first else "exact_u8" for n in names}))
    explicit = json.loads(invoke("evaluate", full, "--run", run_dir, "--json").stdout)
    assert out["accuracy"] == explicit["accuracy"] and out["energy_rel"] == explicit["energy_rel"]
    assert out["assignment"] == explicit["assignment"]
