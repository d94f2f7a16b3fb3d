"""`dse export` and the configuration JSON: the chosen point, the schema on write and on read, the minimal
shape other commands rely on, and each bad input as one line with exit code 2."""

from __future__ import annotations

import json

import jsonschema
import pytest
from click.testing import CliRunner
from report_fixture import LAYERS, QUANT_ACC, fake_library, make_run_dir

from dse.cli import cli
from dse.hwconfig import config_schema, read_assignment, read_config, validate_config
from dse.report.export import export_config
from dse.util import UserError


@pytest.fixture
def run(tmp_path, monkeypatch):
    summary = make_run_dir(tmp_path / "run")
    monkeypatch.setattr("dse.report.export.load_library_for", lambda run: fake_library())
    return tmp_path / "run", summary


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("budget_pp", [0.5, 1.0, 3.0, 100.0])
def test_budget_picks_lowest_energy_front_point_within_budget(run, tmp_path, budget_pp):
    run_dir, summary = run
    floor = QUANT_ACC - budget_pp / 100
    ok = [p for p in summary["front"] if p["accuracy"] >= floor - 1e-12]
    assert ok, "the fixture has a front point within every tested budget"
    expected = min(ok, key=lambda p: p["energy_rel"])
    out = tmp_path / "cfg.json"
    result = invoke("export", run_dir, "--max-accuracy-loss", budget_pp, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    cfg = json.loads(out.read_text())
    assert info["trial"] == expected["trial"] == cfg["provenance"]["trial"]
    assert cfg["totals"]["accuracy"] >= floor - 1e-12
    assert {layer["name"]: layer["multiplier"] for layer in cfg["layers"]} == expected["assignment"]
    # no other front point within the budget is cheaper
    assert all(p["energy_rel"] >= cfg["totals"]["energy_rel"] for p in ok)


def test_config_content_matches_run_and_library(run, tmp_path):
    run_dir, summary = run
    point = summary["front"][len(summary["front"]) // 2]
    path, cfg = export_config(run_dir, tmp_path / "c.json", trial=point["trial"], library=fake_library())
    jsonschema.validate(cfg, config_schema())
    assert cfg["schema_version"] == 3
    lib = fake_library()
    total_macs = sum(layer["macs"] for layer in LAYERS)
    for layer, spec in zip(cfg["layers"], LAYERS):
        m = lib.get(point["assignment"][spec["name"]])
        assert layer["name"] == spec["name"] and layer["multiplier"] == m.name
        assert layer["lut_sha256"] == m.sha256 and layer["energy_rel"] == m.energy_rel
        assert layer["macs"] == spec["macs"] and layer["shape"] == spec["weight_shape"]
        assert layer["mac_share"] == pytest.approx(spec["macs"] / total_macs)
        assert layer["predicted_sigma"] is not None and layer["tolerance"] is not None
    assert sum(layer["energy_share"] for layer in cfg["layers"]) == pytest.approx(1.0)
    # energy_rel recomputed from the layers equals the recorded one (Σ share·e)
    assert sum(layer["mac_share"] * layer["energy_rel"] for layer in cfg["layers"]) == pytest.approx(
        cfg["totals"]["energy_rel"]
    )
    assert cfg["totals"]["accuracy"] == point["accuracy"]
    assert cfg["totals"]["energy_saving"] == pytest.approx(1 - point["energy_rel"])
    assert cfg["totals"]["quant_accuracy"] == QUANT_ACC
    assert cfg["provenance"]["study"] == "synthetic_digits"
    assert cfg["model"]["name"] == "digits_cnn" and len(cfg["model"]["checkpoint_sha256"]) == 64
    assert cfg["quantization"]["format"] == "unsigned"
    # the same point exported twice gives the same bytes (the report relies on it)
    again, _ = export_config(run_dir, tmp_path / "d.json", trial=point["trial"], library=fake_library())
    assert again.read_bytes() == path.read_bytes()


def test_read_assignment_accepts_config_and_plain_object(run, tmp_path):
    run_dir, summary = run
    point = summary["front"][1]
    path, _ = export_config(run_dir, tmp_path / "c.json", trial=point["trial"], library=fake_library())
    assert read_assignment(path) == point["assignment"]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(point["assignment"]))
    assert read_assignment(plain) == point["assignment"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"features.0": 3}))
    with pytest.raises(UserError, match="layer name"):
        read_assignment(bad)


def test_default_output_is_in_run_configs(run):
    run_dir, summary = run
    trial = summary["front"][0]["trial"]
    result = invoke("export", run_dir, "--trial", trial)
    assert result.exit_code == 0, result.output
    assert (run_dir / "configs" / f"trial_{trial}.json").is_file()
    assert "energy saving" in result.output


# ------------------------------------------------------------------------------------------- bad input


def test_run_dir_without_search_says_what_to_run(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(invoke("export", tmp_path / "empty", "--trial", 0, "-o", tmp_path / "x.json"))
    assert "summary.json" in line and "dse search" in line
    assert not (tmp_path / "x.json").exists()


def test_unknown_trial(run, tmp_path):
    run_dir, _ = run
    line = one_line_error(invoke("export", run_dir, "--trial", 9999, "-o", tmp_path / "x.json"))
    assert "--trial 9999" in line and "0..59" in line
    assert not (tmp_path / "x.json").exists()


def test_budget_no_point_meets_names_best_available(run, tmp_path):
    run_dir, summary = run
    best = max(summary["front"], key=lambda p: p["accuracy"])
    # a negative-loss budget is impossible; use a budget just below the best point's loss
    loss_pp = 100 * (QUANT_ACC - best["accuracy"])
    budget = max(0.0, loss_pp - 0.01) if loss_pp > 0.01 else None
    if budget is None:  # the fixture's best front point is at quantized accuracy: make it unreachable
        data = json.loads((run_dir / "summary.json").read_text())
        data["quant_accuracy"] = best["accuracy"] + 0.02
        (run_dir / "summary.json").write_text(json.dumps(data))
        budget = 1.0
    line = one_line_error(invoke("export", run_dir, "--max-accuracy-loss", budget, "-o", tmp_path / "x.json"))
    assert "best available is trial" in line and str(best["trial"]) in line
    assert not (tmp_path / "x.json").exists()


def test_trial_and_budget_are_exclusive(run, tmp_path):
    run_dir, _ = run
    one_line_error(invoke("export", run_dir, "-o", tmp_path / "x.json"))
    one_line_error(
        invoke("export", run_dir, "--trial", 1, "--max-accuracy-loss", 1, "-o", tmp_path / "x.json")
    )


def test_schema_violation_names_the_field(run, tmp_path):
    run_dir, summary = run
    _, cfg = export_config(
        run_dir, tmp_path / "c.json", trial=summary["front"][0]["trial"], library=fake_library()
    )
    broken = json.loads(json.dumps(cfg))
    broken["layers"][1]["lut_sha256"] = "nothex"
    with pytest.raises(UserError, match=r"layers\[1\]\.lut_sha256"):
        validate_config(broken)
    broken = json.loads(json.dumps(cfg))
    del broken["layers"][0]["multiplier"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(UserError, match=r"layers\[0\].*multiplier"):
        read_config(path)
    broken = json.loads(json.dumps(cfg))
    broken["totals"]["bogus"] = 1
    with pytest.raises(UserError, match="totals.*bogus"):
        validate_config(broken)
    broken = json.loads(json.dumps(cfg))
    broken["schema_version"] = 4
    path.write_text(json.dumps(broken))
    with pytest.raises(UserError, match="schema_version"):
        read_config(path)


def test_schema_is_shipped_and_valid():
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    item = schema["properties"]["layers"]["items"]
    assert {"name", "multiplier"} <= set(item["required"])  # the minimal shape of ARCHITECTURE.md


def test_hardware_handoff_of_an_exported_point(run, tmp_path):
    """`dse export --hardware DIR`: vectors and a manifest entry per multiplier the configuration uses, with
    the configuration's LUT sha256; these synthetic tables have no circuit, so no Verilog."""
    run_dir, _ = run
    hw = tmp_path / "hw"
    result = invoke("export", run_dir, "--trial", 3, "-o", tmp_path / "cfg.json", "--hardware", hw)
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    manifest = json.loads((hw / "manifest.json").read_text())
    used = {layer["multiplier"]: layer["lut_sha256"] for layer in cfg["layers"]}
    assert {e["name"]: e["lut_sha256"] for e in manifest["multipliers"]} == used
    for e in manifest["multipliers"]:
        assert e["verilog"] is None and (hw / e["vectors"]).is_file()
        assert sorted(e["layers"]) == sorted(
            n for n, m in ((x["name"], x["multiplier"]) for x in cfg["layers"]) if m == e["name"]
        )
