"""`dse prepare` on the user's own pretrained network: its file imports a sibling module, its checkpoint
was saved from DataParallel with training state, it computes on normalised inputs ([data] mean / std),
it registers BatchNorm before the conv, and the data carry an official test split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dse.cli import cli
from dse.data import load_digits_pool

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

MEAN, STD = 0.3, 0.4

LAYERS = '''
import torch.nn as nn
class ConvBlock(nn.Module):
    """BN registered before its conv: not the conv's next child."""
    def __init__(self, cin, cout):
        super().__init__()
        self.bn = nn.BatchNorm2d(cout)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.act = nn.ReLU()
    def forward(self, x):
        return self.act(self.bn(self.conv(x)))
'''

NET = """
import torch.nn as nn
from own_layers_q import ConvBlock
def net():
    return nn.Sequential(ConvBlock(1, 8), nn.MaxPool2d(2), ConvBlock(8, 16), nn.Flatten(), nn.Linear(16 * 16, 10))
"""

STUDY = """
name = "own"
search_space = "unsigned_sm"
[model]
name = "net.py:net"
checkpoint = "weights/best.pt"
[data]
name = "npz"
path = "digits_split.npz"
val_size = 200
test_size = 150
mean = [{mean}]
std = [{std}]
[train]
qat_epochs = 0
calibration_batches = 2
"""


def _user_files(tmp_path: Path) -> torch.nn.Module:
    """The user's folder: model file + sibling module, an .npz with an official test split, a checkpoint
    trained (briefly, here) on normalised inputs and saved from DataParallel with its training state."""
    import sys

    (tmp_path / "own_layers_q.py").write_text(LAYERS)
    (tmp_path / "net.py").write_text(NET)
    x, y = load_digits_pool()
    x8 = (x[:, 0] * 255).round().astype(np.uint8)
    np.savez(tmp_path / "digits_split.npz", x=x8[:1400], y=y[:1400], x_test=x8[1400:], y_test=y[1400:])
    sys.path.insert(0, str(tmp_path))
    try:
        from net import net  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    model = net()
    xs = (torch.from_numpy(x8[:1400]).float()[:, None] / 255 - MEAN) / STD
    ys = torch.from_numpy(y[:1400])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        for i in range(0, len(xs), 64):
            loss = torch.nn.functional.cross_entropy(model(xs[i : i + 64]), ys[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    (tmp_path / "weights").mkdir()
    torch.save({"state_dict": state, "epoch": 4, "best_prec1": 0.0}, tmp_path / "weights" / "best.pt")
    return model.eval()


def test_own_pretrained_network_prepares_without_float_training(tmp_path):
    model = _user_files(tmp_path)
    (tmp_path / "own.toml").write_text(STUDY.format(mean=MEAN, std=STD))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["prepare", str(tmp_path / "own.toml"), "--out", str(out), "--json"],
        env={"DSE_NO_PROGRESS": "1"},
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["stages"]["float"] == "checkpoint"  # epochs default to 0 with a checkpoint
    assert got["split"] == "official"
    splits = json.loads((out / "splits.json").read_text())
    assert splits["split"] == "official" and splits["mean"] == [MEAN] and splits["std"] == [STD]
    # the float accuracy dse measures is the network's own on its normalised inputs
    from dse.data import load_splits
    from dse.study import load_study

    study = load_study(out / "study.toml")
    val = load_splits(study.data).val
    with torch.no_grad():
        own = int((model(val.tensors[0]).argmax(1) == val.tensors[1]).sum()) / len(val)
    assert got["float_accuracy"] == pytest.approx(own, abs=1e-9)
    assert got["float_accuracy"] > 0.8
    # BN registered before its conv was folded through the graph; nothing stays in float
    assert got["folded_batchnorm"] == ["0.bn", "2.bn"] and got["float_batchnorm"] == []
    # validation + test of the exact table are reported; the first layer took the shifted zero point
    assert got["lut_exact_test_accuracy"] == got["quant_test_accuracy"]
    assert abs(got["quant_accuracy"] - got["float_accuracy"]) < 0.05
    from dse.nn import approx_layers
    from dse.prepare import load_prepared

    prepared = load_prepared(out)

    assert approx_layers(prepared.model)["0.conv"].act_rule == "shifted"


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [("0.1, 0.2", "0.3, 0.3", r"data\.mean: expected 1 value"), ("0.1", "-1", r"data\.std: every value")],
)
def test_bad_mean_std_exit_2_nothing_written(tmp_path, mean, std, message):
    (tmp_path / "own_layers_q.py").write_text(LAYERS)
    (tmp_path / "net.py").write_text(NET)
    x, y = load_digits_pool()
    np.savez(tmp_path / "digits_split.npz", x=x[:500, 0], y=y[:500], x_test=x[500:900, 0], y_test=y[500:900])
    (tmp_path / "own.toml").write_text(
        STUDY.format(mean=mean, std=std).replace('checkpoint = "weights/best.pt"\n', "")
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["prepare", str(tmp_path / "own.toml"), "--out", str(out)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert re.search(message, result.stderr)
    assert not out.exists()


def _bad_setup(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """-> (dse prepare arguments, the message expected) for one bad input of the user's own network."""
    (tmp_path / "own_layers_q.py").write_text(LAYERS)
    (tmp_path / "net.py").write_text(NET)
    x, y = load_digits_pool()
    np.savez(tmp_path / "digits_split.npz", x=x[:500, 0], y=y[:500], x_test=x[500:900, 0], y_test=y[500:900])
    study = STUDY.format(mean=MEAN, std=STD)
    if case == "fashion_path":
        return [
            "fashion_resnet20",
            "--data",
            str(tmp_path / "no-such-dir"),
        ], "apt-get install dataset-fashion-mnist"
    if case == "hook_raises":
        (tmp_path / "net.py").write_text("raise ImportError('needs apex\\nfor mixed precision')\n")
    if case == "checkpoint_misfit":
        (tmp_path / "weights").mkdir()
        torch.save(
            {"state_dict": {"module.conv.weight": torch.zeros(1)}, "epoch": 1}, tmp_path / "weights/best.pt"
        )
    if case == "cifar_missing_batch":
        import pickle

        (tmp_path / "cifar").mkdir()
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_5", "test_batch"):
            with open(tmp_path / "cifar" / name, "wb") as f:
                pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
        study = study.replace('name = "npz"', 'name = "cifar10"').replace("digits_split.npz", "cifar")
    (tmp_path / "own.toml").write_text(study)
    expected = {
        "hook_raises": r"cannot import .*ImportError: needs apex for mixed precision",
        "checkpoint_misfit": r"does not fit the model \(keys: \d+ missing, first '0\.bn\.weight'; 1 unexpected, first 'conv\.weight'\)",
        "cifar_missing_batch": "lacks the CIFAR-10 batch data_batch_4",
    }[case]
    return [str(tmp_path / "own.toml")], expected


@pytest.mark.parametrize("case", ["fashion_path", "hook_raises", "checkpoint_misfit", "cifar_missing_batch"])
def test_bad_own_network_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, case):
    args, expected = _bad_setup(tmp_path, case)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["prepare", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert re.search(expected, result.stderr), result.stderr
    assert not out.exists()
