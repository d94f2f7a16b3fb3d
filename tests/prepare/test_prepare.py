"""`dse prepare` end to end on a tiny digits study: the JSON it prints, the run directory it leaves,
stages that are not recomputed when their inputs did not change, and load_prepared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dse.cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


TINY = """
name = "tiny"
search_space = "{space}"
[model]
name = "digits_cnn"
[data]
name = "digits"
train_size = 300
val_size = 200
test_size = 97
[train]
epochs = {epochs}
qat_epochs = {qat_epochs}
batch_size = 64
lr = 0.01
calibration_batches = 2
"""


def tiny_study(tmp_path: Path, space="unsigned_sm", epochs=4, qat_epochs=1, name="tiny.toml") -> Path:
    p = tmp_path / name
    p.write_text(TINY.format(space=space, epochs=epochs, qat_epochs=qat_epochs))
    return p


def run_json(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, args, env={"DSE_NO_PROGRESS": "1"})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one JSON document on stdout


def test_prepare_json_run_directory_and_resume(tmp_path):
    study = tiny_study(tmp_path)
    out = tmp_path / "run"
    first = run_json(["prepare", str(study), "--out", str(out), "--device", "cpu", "--json"])
    for key in ("float_accuracy", "quant_accuracy", "lut_exact_accuracy"):
        assert 0.5 < first[key] <= 1.0, (key, first[key])  # four epochs already learn digits
    assert first["lut_exact_accuracy"] == first["quant_accuracy"]
    assert [layer["name"] for layer in first["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    conv2 = first["layers"][1]
    assert conv2 == {
        "name": "conv2",
        "kind": "conv",
        "macs": 8 * 8 * 32 * 16 * 9,
        "fan_in": 144,
        "weight_shape": [32, 16, 3, 3],
        "act_rule": "relu",
    }
    assert first["stages"] == {"float": "trained", "qat": "trained", "evaluate": "computed"}
    assert first["splits"] == {"train": 300, "val": 200, "test": 97}
    for f in ("study.toml", "splits.json", "prepare/float.pt", "prepare/qat.pt", "prepare/result.json"):
        assert (out / f).is_file(), f
    assert not list(out.glob("prepare/*.partial.pt"))

    # rerun: nothing recomputed, same numbers
    again = run_json(["prepare", str(study), "--out", str(out), "--device", "cpu", "--json"])
    assert again["stages"] == {"float": "cached", "qat": "cached", "evaluate": "cached"}
    for key in ("float_accuracy", "quant_accuracy", "lut_exact_accuracy", "layers"):
        assert again[key] == first[key]

    # the run directory remembers its study: a run dir alone is enough for later commands
    from dse.prepare import load_prepared, open_run
    from dse.train import evaluate_accuracy

    prepared = load_prepared(out, device="cpu")
    assert prepared.study.name == "tiny" and prepared.study.data.train_size == 300
    assert [info.name for info in prepared.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert prepared.layers[1].macs == conv2["macs"]
    assert evaluate_accuracy(prepared.model, prepared.splits.val, device="cpu") == first["quant_accuracy"]
    assert prepared.quant_accuracy == first["quant_accuracy"]
    assert prepared.fmt.weight_scheme == "sign-magnitude"
    assert "exact_u8" in [m.name for m in prepared.space]
    assert open_run(str(out), device="cpu").quant_accuracy == first["quant_accuracy"]

    # only the QAT budget changed: float training is reused, QAT recomputed
    tiny_study(tmp_path, qat_epochs=2)
    changed = run_json(["prepare", str(study), "--out", str(out), "--device", "cpu", "--json"])
    assert changed["stages"] == {"float": "cached", "qat": "trained", "evaluate": "computed"}
    assert changed["float_accuracy"] == first["float_accuracy"]


def test_interrupted_prepare_resumes_from_the_last_epoch(tmp_path, monkeypatch):
    """A kill during float training leaves prepare/float.partial.pt; the rerun continues from it and
    ends with the weights of an uninterrupted run."""
    import dse.prepare.stage
    import dse.train
    from dse.prepare import prepare
    from dse.study import load_study

    study = load_study(tiny_study(tmp_path, epochs=3, qat_epochs=0))
    prepare(study, out=tmp_path / "ref", device="cpu")
    ref = torch.load(tmp_path / "ref" / "prepare" / "float.pt", weights_only=True)["state_dict"]

    real_fit, calls = dse.train.fit, {"n": 0}

    class Killed(Exception):
        pass

    def killing_fit(*args, **kwargs):
        def extra(model):
            calls["n"] += 1
            if calls["n"] > 2 * 5:  # 5 steps per epoch (300 / 64): die in epoch 3
                raise Killed
            return torch.zeros(())

        return real_fit(*args, **kwargs, extra_loss=extra)

    monkeypatch.setattr(dse.prepare.stage, "fit", killing_fit)
    with pytest.raises(Killed):
        prepare(study, out=tmp_path / "run", device="cpu")
    assert (tmp_path / "run" / "prepare" / "float.partial.pt").is_file()
    monkeypatch.setattr(dse.prepare.stage, "fit", real_fit)
    prepare(study, out=tmp_path / "run", device="cpu")
    got = torch.load(tmp_path / "run" / "prepare" / "float.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("space", ["signed", "unsigned_affine"])
def test_exact_table_equals_quant_in_every_format(tmp_path, space):
    from dse.prepare import prepare

    result = prepare(tiny_study(tmp_path, space=space, qat_epochs=0), out=tmp_path / "run", device="cpu")
    assert result.lut_exact_accuracy == result.quant_accuracy
    assert result.quant_accuracy > 0.5  # a trained network, not a constant one


def test_bad_input_exits_2_with_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["prepare", "mnist_lenet5", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--data" in r.stderr
    np_file = tmp_path / "bad.npz"
    import numpy as np

    np.savez(np_file, images=np.zeros((3, 28, 28), np.uint8), y=np.zeros(3))
    r = runner.invoke(cli, ["prepare", "mnist_lenet5", "--data", str(np_file), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "no array 'x'" in r.stderr
    (tmp_path / "s.toml").write_text('name = "s"\n[model]\nname = "digits_cnn"\ncheckpoint = "w.pt"\n')
    torch.save({"fc9.weight": torch.zeros(1)}, tmp_path / "w.pt")
    r = runner.invoke(cli, ["prepare", str(tmp_path / "s.toml"), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "w.pt does not fit the model" in r.stderr
    assert not (tmp_path / "r2" / "prepare" / "float.pt").exists()
    r = runner.invoke(cli, ["prepare", str(tmp_path / "r2"), "--device", "tpu"])
    assert r.exit_code == 2


def test_batchnorm_models_are_folded_before_quantization(tmp_path):
    """ResNet / MobileNet carry BatchNorm: prepare folds it into the convs (checked equal in float) and
    the exact table still reproduces the quantized network."""
    from dse.prepare import load_prepared, prepare

    (tmp_path / "blobs.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    rng = np.random.default_rng(0)\n"
        "    y = np.arange(160) % 2\n"
        "    x = rng.integers(0, 120, (160, 3, 16, 16)).astype(np.uint8)\n"
        "    x[y == 1, 0] += 100  # class 1: a brighter red channel\n"
        "    return x, y\n"
    )
    (tmp_path / "s.toml").write_text(
        'name = "bn"\n[model]\nname = "resnet8"\n[data]\nname = "blobs.py:load"\nval_size = 40\ntest_size = 20\n'
        "[train]\nepochs = 1\nqat_epochs = 1\nbatch_size = 32\nlr = 0.01\ncalibration_batches = 2\n"
    )
    result = prepare(tmp_path / "s.toml", out=tmp_path / "run", device="cpu")
    assert len(result.folded_batchnorm) == 9  # stem + 6 in blocks + 2 shortcuts
    assert result.lut_exact_accuracy == result.quant_accuracy
    assert len(result.layers) == 10  # 9 convs + fc
    prepared = load_prepared(tmp_path / "run")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.model.modules())


def test_run_directory_remembers_the_data_given_with_data(tmp_path, monkeypatch):
    """`--data` is written into the run's study.toml (absolute), so later commands need only RUN_DIR."""
    import numpy as np
    import tomllib

    from dse.data import load_digits_pool

    x, y = load_digits_pool()
    np.savez(tmp_path / "digits.npz", x=(x[:, 0] * 255).astype(np.uint8), y=y.astype(np.uint8))
    (tmp_path / "s.toml").write_text(
        TINY.format(space="unsigned_sm", epochs=1, qat_epochs=0).replace(
            'name = "digits"\n', 'name = "npz"\n'
        )
    )
    monkeypatch.chdir(tmp_path)  # a relative --data path is stored absolute
    first = run_json(
        ["prepare", "s.toml", "--data", "digits.npz", "--out", "run", "--device", "cpu", "--json"]
    )
    stored = tomllib.loads((tmp_path / "run" / "study.toml").read_text())
    assert stored["data"]["path"] == str((tmp_path / "digits.npz").resolve())
    again = run_json(["prepare", str(tmp_path / "run"), "--device", "cpu", "--json"])  # the run dir alone
    assert again["stages"]["float"] == "cached" and again["quant_accuracy"] == first["quant_accuracy"]
    from dse.prepare import load_prepared

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_prepared(tmp_path / "run").splits.info["sizes"]["val"] == 200
    np.savez(tmp_path / "other.npz", x=np.zeros((700, 8, 8), np.uint8), y=np.zeros(700, np.uint8))
    with pytest.raises(Exception, match="not the data"):
        load_prepared(tmp_path / "run", data=tmp_path / "other.npz")


def test_a_builtin_name_is_the_study_even_next_to_a_run_dir_of_that_name(tmp_path, monkeypatch):
    from dse.prepare.stage import run_dir_target

    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "study.toml").write_text('name = "digits"\n')
    monkeypatch.chdir(tmp_path)
    assert run_dir_target("digits") is None  # the built-in study
    assert run_dir_target("./digits") is not None  # the folder
    assert run_dir_target(tmp_path / "digits") is not None
    assert run_dir_target("elsewhere") is None
