"""`dse retrain` input checks that need no prepared network: configuration files and their errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from dse.cli import cli
from dse.hwconfig import read_assignment_file, resolve_assignment
from dse.multipliers.library import load_library
from dse.quant import QuantFormat
from dse.util import UserError

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


@pytest.fixture(scope="module")
def prepared():
    return SimpleNamespace(
        layers=[SimpleNamespace(name=n) for n in LAYERS],
        library=load_library(),
        fmt=QuantFormat.from_names("unsigned", "sign-magnitude"),
        study=SimpleNamespace(model=SimpleNamespace(name="digits_cnn")),
    )


def test_plain_object_and_configuration_file_give_the_same_assignment(tmp_path, prepared):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"conv2": "bam_h2_v6_u8", "fc1": "trunc6_u8"}))
    a, _ = read_assignment_file(plain)
    assert a == {"conv2": "bam_h2_v6_u8", "fc1": "trunc6_u8"}
    resolved = resolve_assignment(a, prepared)
    assert {k: m.name for k, m in resolved.items()} == a
    # the minimal shape of the exported configuration (ARCHITECTURE.md)
    cfg = tmp_path / "cfg.json"
    layers = [{"name": n, "multiplier": a.get(n, "exact_u8")} for n in LAYERS]
    cfg.write_text(json.dumps({"schema_version": 1, "layers": layers}))
    b, _ = read_assignment_file(cfg)
    assert {k: v for k, v in b.items() if v != "exact_u8"} == a


def test_unknown_layer_is_named(prepared):
    with pytest.raises(UserError) as e:
        resolve_assignment({"conv1": "trunc6_u8", "conv9": "trunc6_u8"}, prepared, where="cfg.json")
    msg = str(e.value)
    assert msg.startswith("cfg.json:") and "conv9" in msg and "conv1, conv2, fc1, fc2" in msg


def test_config_from_another_model_says_which_layers_differ(prepared):
    lenet = {
        "conv1": "exact_u8",
        "conv2": "exact_u8",
        "fc1": "exact_u8",
        "fc2": "exact_u8",
        "fc3": "trunc6_u8",
    }
    with pytest.raises(UserError) as e:
        resolve_assignment(lenet, prepared, where="lenet.json")
    assert "layers not in the model: fc3" in str(e.value)
    # same layer names but another model in the configuration's identity
    raw = {"model": {"name": "lenet5"}, "layers": []}
    with pytest.raises(UserError) as e:
        resolve_assignment({"conv1": "exact_u8"}, prepared, where="x.json", raw=raw)
    assert "lenet5" in str(e.value) and "digits_cnn" in str(e.value)


def test_unknown_or_wrong_format_multiplier(prepared):
    with pytest.raises(UserError, match="conv1: multiplier 'nope_u8' is not in the library"):
        resolve_assignment({"conv1": "nope_u8"}, prepared)
    signed = next(m.name for m in prepared.library.multipliers(signed=True))
    with pytest.raises(UserError, match="is not unsigned"):
        resolve_assignment({"conv1": signed}, prepared)


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"conv1": "trunc6_u8"}))
    runner = CliRunner()
    cases = [
        (["retrain", str(tmp_path), "--config", str(cfg), "--epochs", "0"], "--epochs 0"),
        (["retrain", str(tmp_path), "--config", str(cfg), "--method", "magic"], "--method magic"),
        (["retrain", str(tmp_path), "--config", str(cfg)], "no prepared checkpoint"),
        (["retrain", str(tmp_path / "none"), "--config", str(cfg)], "run directory not found"),
        (["retrain", str(tmp_path), "--config", str(tmp_path / "missing.json")], "not found"),
        (["retrain", str(tmp_path)], "--config"),
    ]
    for args, text in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert text in result.output and result.output.count("\n") == 1, result.output
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = runner.invoke(cli, ["retrain", str(tmp_path), "--config", str(bad)])
    assert result.exit_code == 2 and "bad.json" in result.output


def test_cli_method_names_are_the_library_methods():
    from dse.cli.retrain import METHOD_NAMES
    from dse.retrain.surrogates import METHODS

    assert METHOD_NAMES == METHODS


def test_partial_assignment_is_refused_naming_the_layers_unless_rest_exact(tmp_path, prepared):
    from dse.retrain.loop import retrain

    fake = SimpleNamespace(**vars(prepared), layer_names=LAYERS)
    partial = {"conv2": "bam_h2_v6_u8", "fc1": "trunc6_u8"}
    with pytest.raises(UserError) as e:
        retrain(tmp_path, partial, "errmodel", prepared=fake, where="part.json")
    msg = str(e.value)
    assert msg.startswith("part.json:") and "conv1, fc2" in msg and "--rest exact" in msg
    # with --rest exact the check passes (this fake run then has no model to retrain)
    with pytest.raises(AttributeError, match="model"):
        retrain(tmp_path, partial, "errmodel", prepared=fake, where="part.json", rest="exact")
