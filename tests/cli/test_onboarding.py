"""A new user's first hour: `dse init`, the study page, `--library` on every library-reading command, the
messages that say where things went and what to do next."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from dse.cli import COMMANDS, cli
from dse.cli.init import study_template
from dse.cli.search import end_of_run_lines
from dse.study import SearchSpace, Study, load_search_space, load_study
from dse.util import UserError

REPO = Path(__file__).resolve().parents[2]
# the commands that load the multiplier library (the search space, a configuration's multipliers, …)
LIBRARY_COMMANDS = [
    ["search"],
    ["worker"],
    ["prepare"],
    ["agn"],
    ["analyze"],
    ["retrain"],
    ["report"],
    ["export"],
    ["evaluate"],
    ["bench", "model"],
    ["multipliers", "list"],
    ["multipliers", "show"],
    ["multipliers", "import"],
    ["multipliers", "export"],
]


def study_keys() -> dict[str, list[str]]:
    """{section ("" for the top level): its keys} of the study model."""
    out: dict[str, list[str]] = {"": []}
    for key, field in Study.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[key] = list(ann.model_fields)
        else:
            out[""].append(key)
    return out


def _sections(text: str) -> dict[str, set[str]]:
    """{TOML section: keys written there, commented out ("# key = …") or not}."""
    out: dict[str, set[str]] = {"": set()}
    section = ""
    for line in text.splitlines():
        head = re.match(r"^\[(\w+)\]$", line)
        if head:
            section = head.group(1)
            out[section] = set()
            continue
        key = re.match(r"^#?\s?(\w+) = ", line)
        if key:
            out[section].add(key.group(1))
    return out


def test_init_writes_a_valid_study_with_every_key(tmp_path):
    path = tmp_path / "my_study.toml"
    result = CliRunner().invoke(cli, ["init", str(path)])
    assert result.exit_code == 0, result.output
    assert f"dse search {path}" in result.output
    study = load_study(path)  # valid as written
    assert study.model.name == "my_model.py:build_model" and study.model.checkpoint == "my_model.pt"
    assert study.data.name == "npz" and study.data.path == "my_data.npz"
    assert study.train.epochs is None  # defaults stay defaults (10, or 0 with the checkpoint)
    written = _sections(path.read_text())
    for section, keys in study_keys().items():
        assert set(keys) <= written.get(section, set()), (section, set(keys) - written.get(section, set()))


def test_init_never_overwrites_without_force(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("mine")
    result = CliRunner().invoke(cli, ["init", str(path)])
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output
    assert path.read_text() == "mine"
    assert CliRunner().invoke(cli, ["init", str(path), "--force"]).exit_code == 0
    assert path.read_text() == study_template("s.toml")


def test_study_page_lists_every_key_and_is_linked_from_the_readme():
    page = (REPO / "docs" / "studies.md").read_text()
    for section, keys in study_keys().items():
        for key in keys:
            assert f"| `{key}` |" in page, f"docs/studies.md: [{section}] {key} is not listed"
    for key in SearchSpace.model_fields:
        assert f"| `{key}`" in page or f"`[{key}." in page, f"docs/studies.md: search space {key}"
    assert "docs/studies.md" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("command", LIBRARY_COMMANDS, ids=" ".join)
def test_every_library_reading_command_takes_library(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--library" in result.output, f"dse {' '.join(command)} has no --library"


def test_library_option_is_the_library_every_stage_loads(tmp_path, monkeypatch):
    from dse.multipliers.library import load_library

    monkeypatch.delenv("DSE_LIBRARY", raising=False)
    lib = tmp_path / "mylib"
    table = np.outer(np.arange(256), np.arange(256)).astype(np.int32)
    table[3, 5] += 1
    np.save(tmp_path / "t.npy", table)
    result = CliRunner().invoke(
        cli,
        ["multipliers", "import", str(tmp_path / "t.npy"), "--unsigned", "--name", "mine_u8"]
        + ["--energy-rel", "0.9", "--library", str(lib)],
    )
    assert result.exit_code == 0, result.output
    assert f"into the library {lib.resolve()}" in result.stderr  # it says where it wrote
    # a command given --library makes it the library every stage of that process loads (load_library(),
    # which the search space, the configuration resolver and the report call)
    assert "mine_u8" not in load_library().names()
    result = CliRunner().invoke(cli, ["bench", "model", "--library", str(lib), "--multiplier", "nope_u8"])
    assert result.exit_code == 2
    assert "mine_u8" in load_library().names()  # --library set the library for this process


def test_no_match_error_names_the_library_and_both_ways_elsewhere(tmp_path):
    from dse.multipliers.library import load_library

    with pytest.raises(UserError) as e:
        load_library(tmp_path / "lib").select(["mine_*"], False, where="search space s: multipliers")
    msg = str(e.value)
    assert str(tmp_path / "lib") in msg and "--library DIR" in msg and "DSE_LIBRARY=DIR" in msg
    assert "\n" not in msg


def test_search_space_library_is_relative_to_its_file(tmp_path):
    (tmp_path / "spaces").mkdir()
    space = tmp_path / "spaces" / "s.toml"
    space.write_text(
        'name = "s"\nformat = "unsigned"\nweight_scheme = "sign-magnitude"\n'
        'multipliers = ["exact_u8", "mine_*"]\nlibrary = "../mylib"\n'
    )
    from dse.multipliers import Multiplier, exact_table
    from dse.multipliers.library import save_user_multiplier

    lut = exact_table(False).copy()
    lut[7, 7] += 2
    save_user_multiplier(Multiplier("mine_u8", False, lut, 0.5, "test"), tmp_path / "mylib")
    loaded = load_search_space(space)
    assert loaded.library == str((tmp_path / "mylib").resolve())
    assert [m.name for m in loaded.resolve(loaded.load_library())] == ["exact_u8", "mine_u8"]


def _summary(**targets):
    return SimpleNamespace(targets=SimpleNamespace(**targets))


def test_end_of_run_lines_give_the_headline_in_percent_and_the_next_commands():
    lines = end_of_run_lines(
        _summary(best_saving_within_1pp=0.878, best_homogeneous_saving_within_1pp=0.69), Path("runs/digits")
    )
    assert lines[0] == (
        "best energy saving within 1 pp: 87.8 % (best homogeneous 69.0 %), judged on the validation split"
    )
    assert "run directory: runs/digits" in lines[1]
    assert "  dse report runs/digits --open" in lines
    assert "  dse export runs/digits --max-accuracy-loss 1.0 -o cfg.json" in lines
    # the test-judged headline wins where the summary has it
    test_judged = end_of_run_lines(
        _summary(best_saving_within_1pp=0.9, best_saving_within_1pp_test=0.85), Path("my run")
    )
    assert test_judged[0].startswith("best energy saving within 1 pp: 85.0 %")
    assert test_judged[0].endswith("judged on the test split")
    assert "  dse report 'my run' --open" in test_judged


def test_pdk45_power_that_is_not_a_number_says_so(tmp_path):
    c = tmp_path / "mul8u_nan.c"
    c.write_text(
        "// PDK45_PWR = nan mW\n#include <stdint.h>\n"
        "uint16_t mul8u_nan(uint8_t a, uint8_t b) { return a * b; }\n"
    )
    result = CliRunner().invoke(cli, ["multipliers", "import", str(c), "--library", str(tmp_path / "lib")])
    assert result.exit_code == 2
    assert "PDK45_PWR" in result.output and "not a power figure" in result.output
    assert "no energy figure" not in result.output


def test_one_epoch_fit_does_not_say_epoch_1_of_1(capsys):
    import torch

    from dse.train import fit

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    data = torch.utils.data.TensorDataset(torch.randn(16, 1, 2, 2), torch.randint(0, 2, (16,)))
    fit(model, data, None, epochs=1, lr=1e-2, batch_size=8, device="cpu", desc="retrain x epoch 2/3")
    err = capsys.readouterr().err
    assert "retrain x epoch 2/3: loss" in err and "1/1" not in err


def test_help_never_points_outside_the_repository():
    for name in COMMANDS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name
        assert "../shared" not in result.output, name
    assert "../shared" not in (REPO / "docs" / "ARCHITECTURE.md").read_text()
    assert "../shared" not in (REPO / "README.md").read_text()


def test_a_layer_with_negative_inputs_is_recorded_as_shifted():
    """An unsigned layer whose calibration saw negative inputs runs with a shifted zero point, and the
    prepare record (result.json, summary.json, the report, `dse prepare`'s listing) says so."""
    import torch

    from dse.nn import calibrate, convert, layer_infos, set_mode
    from dse.prepare.records import PreparedLayer
    from dse.quant import QuantFormat

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    model.append(torch.nn.Linear(4 * 6 * 6, 3))
    model = convert(model, QuantFormat.from_names("unsigned", "sign-magnitude"))
    calibrate(model, [torch.randn(8, 1, 8, 8)])  # normalised images: negative first-layer inputs
    set_mode(model, "quant")
    model(torch.randn(2, 1, 8, 8))  # MACs are known after a forward
    layers = [PreparedLayer.of(info) for info in layer_infos(model)]
    assert [(layer.act_rule, layer.shifted) for layer in layers] == [("shifted", True), ("relu", False)]
    assert PreparedLayer.from_json(layers[0].to_json()) == layers[0]
    old = layers[0].to_json()
    del old["act_rule"]  # a result.json written before the field existed
    assert PreparedLayer.from_json(old).act_rule == ""
