"""Every bad input of the review: one line on stderr starting `error:`, exit 2, no traceback — and early:
what can be checked without training is refused before the prepare stage writes anything."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from dse.cli import cli

EXACT_NPY = "exact.npy"


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    assert not (result.exception and not isinstance(result.exception, SystemExit)), repr(result.exception)
    return result.exit_code, result.stderr


def _assert_one_line(args: list[str], *needles: str) -> str:
    code, err = _run(args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DSE_LIBRARY", str(tmp_path / "library"))
    a = np.arange(256)
    np.save(tmp_path / EXACT_NPY, (a[:, None] * a[None, :]).astype(np.int32))
    return tmp_path


STUDIES = {
    "empty name": ('name = ""\n', "name"),
    "name climbing out of runs/": ('name = "../../x"\n', "name"),
    "absolute name": ('name = "/tmp/x"\n', "name"),
    "no AGN lambdas": ('name = "s"\n[agn]\nlambdas = []\n', "agn.lambdas"),
    "negative AGN lambda": ('name = "s"\n[agn]\nlambdas = [0.5, -0.2]\n', "lambdas"),
    "epochs beyond any training": ('name = "s"\n[train]\nepochs = 9223372036854775807\n', "train.epochs"),
}


@pytest.mark.parametrize("case", sorted(STUDIES))
def test_bad_study_is_refused_before_anything_is_written(here, case):
    text, needle = STUDIES[case]
    (here / "s.toml").write_text(text)
    _assert_one_line(["prepare", "s.toml"], "s.toml", needle)
    assert not (here / "runs").exists()  # nothing prepared, no run directory (runs/ itself included)


def test_study_and_configuration_that_are_not_utf8(here):
    (here / "s.toml").write_bytes(b'name = "\xff\xfe"\n')
    _assert_one_line(["prepare", "s.toml"], "s.toml", "not UTF-8")
    (here / "cfg.json").write_bytes(b'{"conv1": "\xff"}')
    _assert_one_line(["evaluate", "cfg.json"], "cfg.json", "not UTF-8")


def test_model_hook_that_does_not_fit_the_data_names_the_layer_and_shapes(here):
    (here / "nets.py").write_text(
        "from torch import nn\n"
        "def small():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 10))\n"
    )
    (here / "s.toml").write_text('name = "s"\n[model]\nname = "nets.py:small"\n')
    line = _assert_one_line(["prepare", "s.toml"], "layer '1'", "Linear", "[2, 64]", "[16, 10]")
    assert "mat1 and mat2" in line
    assert not (here / "runs" / "s" / "prepare" / "float.pt").exists()  # refused before training
    (here / "nets.py").write_text(
        "from torch import nn\ndef small():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))\n"
    )
    _assert_one_line(["prepare", "s.toml"], "[2, 7]", "[batch, 10]")


def test_search_space_and_budget_errors_come_before_the_prepare_stage(here):
    (here / "space.toml").write_text(
        'name = "sp"\nformat = "unsigned"\nweight_scheme = "sign-magnitude"\nmultipliers = ["exact_u8", "nosuch_*"]\n'
    )
    (here / "s.toml").write_text('name = "s"\nsearch_space = "space.toml"\n')
    _assert_one_line(["search", "s.toml"], "nosuch_*")
    assert not (here / "runs").exists()
    (here / "space.toml").write_text(
        'name = "sp"\nformat = "unsigned"\nweight_scheme = "sign-magnitude"\nmultipliers = ["exact_u8"]\n'
        '[layers.conv1]\nmultipliers = ["trunc*_s8"]\n'
    )
    _assert_one_line(["search", "s.toml"], "layers.conv1")
    assert not (here / "runs").exists()
    (here / "space.toml").write_text(
        'name = "sp"\nformat = "unsigned"\nweight_scheme = "sign-magnitude"\nmultipliers = ["exact_u8"]\n'
        '[layers.conv9]\nmultipliers = ["trunc4_u8"]\n'
    )
    _assert_one_line(["search", "s.toml"], "layers.conv9", "no such layer", "conv1, conv2, fc1, fc2")
    assert not (here / "runs").exists()
    (here / "s.toml").write_text('name = "s"\n[search]\nbudget = 0\n')
    _assert_one_line(["search", "s.toml"], "search.budget = 0")
    assert not (here / "runs").exists()


def test_multiplier_import_timeout_nan_and_a_name_with_a_newline(here):
    (here / "m.c").write_text("int mul8u_x(int a, int b) { return a * b; }\n")
    for bad in ("nan", "inf", "-1"):
        _assert_one_line(["multipliers", "import", "m.c", "--timeout", bad], "--timeout")
    _assert_one_line(["multipliers", "import", EXACT_NPY, "--name", "mine\n", "--energy-rel", "0.5"], "name")
    assert not (here / "library").exists() or not list((here / "library").iterdir())  # nothing written
    code, err = _run(["multipliers", "import", EXACT_NPY, "--name", "mine", "--energy-rel", "0.5"])
    assert code == 0, err  # the same import with a clean name is accepted
