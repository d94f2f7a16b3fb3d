"""Study and search-space TOML: validation errors that name file, key and what was expected; built-in
resolution by name; search-space resolution against a library."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import tomllib

from dse.multipliers.library import Library
from dse.study import (
    Study,
    builtin_search_spaces,
    builtin_studies,
    load_search_space,
    load_study,
    to_toml,
)
from dse.util import UserError


def write(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_builtin_studies_and_spaces_resolve_by_name():
    assert {"digits", "mnist_lenet5", "cifar10_resnet20"} <= set(builtin_studies())
    assert {"unsigned_sm", "unsigned_affine", "signed"} <= set(builtin_search_spaces())
    for name in builtin_studies():
        study = load_study(name)
        assert study.name == name
        study.load_search_space()  # every built-in study names a valid search space
    assert load_study(None).name == "digits"  # the default
    assert load_study("digits").model.name == "digits_cnn"
    assert load_study("cifar10_resnet20").data.name == "cifar10"
    assert load_search_space("signed").weight_scheme == "symmetric"
    assert load_search_space("unsigned_affine").weight_scheme == "affine"


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(UserError, match=r"no such built-in study.*digits.*mnist_lenet5"):
        load_study("nope")
    with pytest.raises(UserError, match=r"no such built-in search space.*unsigned_sm"):
        load_search_space("nope")


def test_unknown_key_lists_allowed_keys(tmp_path):
    p = write(tmp_path, 'name = "x"\n[train]\nepochs = 1\nepoch = 2\n')
    with pytest.raises(UserError) as e:
        load_study(p)
    msg = str(e.value)
    assert str(p) in msg and "train.epoch: unknown key" in msg
    assert "allowed: epochs, qat_epochs, batch_size, lr" in msg
    p = write(tmp_path, 'name = "x"\nsearchspace = "signed"\n')
    with pytest.raises(
        UserError, match=r"searchspace: unknown key \(allowed: name, search_space, model, data"
    ):
        load_study(p)
    p = write(tmp_path, 'name = "x"\nformat = "signed"\nweight_scheme = "symmetric"\nmultipliers = ["*"]\n'
              '[layers.conv1]\nmultiplier = ["a"]\n')  # fmt: skip
    with pytest.raises(UserError, match=r"layers\.conv1\.multiplier: unknown key \(allowed: multipliers\)"):
        load_search_space(p)


def test_wrong_type_and_range_name_the_key(tmp_path):
    p = write(tmp_path, 'name = "x"\n[train]\nepochs = "ten"\n')
    with pytest.raises(
        UserError, match=r's\.toml: train\.epochs: input should be a valid integer.*got "ten"'
    ):
        load_study(p)
    p = write(tmp_path, 'name = "x"\n[data]\nval_size = 0\n')
    with pytest.raises(UserError, match=r"data\.val_size: input should be greater than or equal to 1"):
        load_study(p)
    p = write(tmp_path, "[train]\nepochs = 1\n")
    with pytest.raises(UserError, match=r"name: required key missing"):
        load_study(p)
    p = write(tmp_path, 'name = "x"\n[train\n')
    with pytest.raises(UserError, match=r"s\.toml: not valid TOML"):
        load_study(p)


def test_search_space_scheme_must_fit_format(tmp_path):
    p = write(tmp_path, 'name = "x"\nformat = "signed"\nweight_scheme = "affine"\nmultipliers = ["*"]\n')
    with pytest.raises(UserError, match=r"weight_scheme 'affine' does not go with format 'signed'"):
        load_search_space(p)


def test_relative_paths_resolve_against_the_study_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", 'name = "sp"\nformat = "signed"\nweight_scheme = "symmetric"\nmultipliers = ["exact_s8"]\n',
          "space.toml")  # fmt: skip
    p = write(tmp_path / "sub", 'name = "x"\nsearch_space = "space.toml"\n[data]\nname = "npz"\npath = "d.npz"\n'
              '[model]\nname = "nets.py:make"\n')  # fmt: skip
    study = load_study(p)
    assert study.load_search_space().name == "sp"
    r = study.resolved()
    assert r.data.path == str((tmp_path / "sub" / "d.npz").resolve())
    assert r.model.name == f"{(tmp_path / 'sub' / 'nets.py').resolve()}:make"
    assert r.search_space == str((tmp_path / "sub" / "space.toml").resolve())
    assert study.resolved(data_path=tmp_path / "other.npz").data.path == str(
        (tmp_path / "other.npz").resolve()
    )


def test_study_toml_round_trip(tmp_path):
    study = load_study("cifar10_resnet20").resolved(data_path=tmp_path)
    text = study.to_toml()
    again = Study.model_validate(tomllib.loads(text))
    assert again.model_dump() == study.model_dump()
    assert tomllib.loads(to_toml({"a": 1, "t": {"b": [1.5, 2.0], "s": 'q"x'}})) == {
        "a": 1,
        "t": {"b": [1.5, 2.0], "s": 'q"x'},
    }


@dataclass
class FakeMult:
    name: str
    signed: bool
    dominated: bool = False


class FakeLibrary(Library):
    """A Library of name-only multipliers (selecting reads only `name`, `signed` and `dominated`)."""

    def __init__(self, names):
        super().__init__([FakeMult(n, n.endswith("_s8")) for n in names])


LIB = FakeLibrary(["exact_u8", "bam_a_u8", "bam_b_u8", "trunc4_u8", "exact_s8", "drum4_s8"])


def test_search_space_patterns_resolve_in_library_order(tmp_path):
    p = write(tmp_path, 'name = "x"\nformat = "unsigned"\nweight_scheme = "sign-magnitude"\n'
              'multipliers = ["trunc*", "exact_u8", "bam_*"]\n[layers.fc2]\nmultipliers = ["exact_u8"]\n')  # fmt: skip
    space = load_search_space(p)
    assert [m.name for m in space.resolve(LIB)] == ["exact_u8", "bam_a_u8", "bam_b_u8", "trunc4_u8"]
    per_layer = space.resolve_layers(LIB, ["conv1", "fc2"])
    assert [m.name for m in per_layer["fc2"]] == ["exact_u8"]
    assert len(per_layer["conv1"]) == 4
    with pytest.raises(UserError, match=r"layers\.fc2: no such layer \(layers: conv1, fc1\)"):
        space.resolve_layers(LIB, ["conv1", "fc1"])
    star = load_search_space("signed")
    assert [m.name for m in star.resolve(LIB)] == ["exact_s8", "drum4_s8"]


def test_unknown_or_wrong_format_multiplier_is_an_error(tmp_path):
    p = write(
        tmp_path, 'name = "x"\nformat = "unsigned"\nweight_scheme = "affine"\nmultipliers = ["nope_u8"]\n'
    )
    with pytest.raises(UserError, match=r"'nope_u8' matches no unsigned multiplier"):
        load_search_space(p).resolve(LIB)
    p = write(
        tmp_path, 'name = "x"\nformat = "unsigned"\nweight_scheme = "affine"\nmultipliers = ["drum4_s8"]\n'
    )
    with pytest.raises(UserError, match=r"drum4_s8 is not unsigned"):
        load_search_space(p).resolve(LIB)


def test_builtin_spaces_resolve_against_the_real_library():
    from dse.multipliers.library import load_library

    lib = load_library()
    for name, exact in (("unsigned_sm", "exact_u8"), ("unsigned_affine", "exact_u8"), ("signed", "exact_s8")):
        names = [m.name for m in load_search_space(name).resolve(lib)]
        assert exact in names and len(names) > 1
        signed = name == "signed"
        assert all(m.signed == signed for m in load_search_space(name).resolve(lib))


def test_compute_commands_share_the_thread_setting():
    """prepare, agn, search and worker all take --threads; the default keeps torch's own (one thread per
    core); 0 is refused."""
    import torch
    from click.testing import CliRunner

    from dse.cli import cli
    from dse.util import set_threads

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        set_threads(None)
        assert torch.get_num_threads() == 2  # the default changes nothing
        set_threads(3)
        assert torch.get_num_threads() == 3
        with pytest.raises(UserError):
            set_threads(0)
    finally:
        torch.set_num_threads(n)
    for cmd in ("prepare", "agn", "search"):
        r = CliRunner().invoke(cli, [cmd, "--threads", "0"])
        assert r.exit_code == 2 and "--threads 0" in r.output, (cmd, r.output)


def test_set_threads_limits_scipys_own_blas_too():
    """scipy ships an OpenBLAS of its own beside numpy's, loaded with scipy.linalg; a limit set before
    it loads does not reach it. In a fresh interpreter started with 4 BLAS threads, every BLAS library
    loaded after set_threads (scipy's included: the surrogate's least-squares fits) runs one thread."""
    import subprocess
    import sys

    code = (
        "from dse.util import set_threads; set_threads(None)\n"
        "import scipy.optimize, scipy.linalg\n"
        "from threadpoolctl import threadpool_info\n"
        "blas = [(i['filepath'], i['num_threads']) for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(blas)\n"
        "assert blas and all(n == 1 for _, n in blas), blas\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "4"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("value", ['"yes"', "1", '"true"', "[true]"])
def test_compensate_bias_is_true_false_or_search(tmp_path, value):
    for ok, expected in (("true", True), ("false", False), ('"search"', "search")):
        p = write(tmp_path, f'name = "x"\n[search]\ncompensate_bias = {ok}\n')
        assert load_study(p).search.compensate_bias == expected
    p = write(tmp_path, f'name = "x"\n[search]\ncompensate_bias = {value}\n')
    with pytest.raises(UserError, match=r'search\.compensate_bias: .*expected true, false or "search"'):
        load_study(p)
    p = write(tmp_path, 'name = "x"\n[search]\nweight_tuning = "yes"\n')
    with pytest.raises(UserError, match=r"search\.weight_tuning: .*expected true or false"):
        load_study(p)
