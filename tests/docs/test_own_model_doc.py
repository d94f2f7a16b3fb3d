"""docs/own-model.md runs as written: its files (the user's ResNet-20 in two modules, their training
script, the study file) on a few CIFAR-shaped images, through `dse prepare`."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dse.cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-model.md"


def doc_files() -> dict[str, str]:
    """The fenced blocks of the page tagged `file=NAME`."""
    blocks = re.findall(r"```\w+ file=(\S+)\n(.*?)```", DOC.read_text(), flags=re.S)
    return dict(blocks)


def test_the_page_has_every_file_of_the_walk_through():
    assert set(doc_files()) == {"blocks.py", "resnet_cifar.py", "train_briefly.py", "study.toml"}


def test_own_model_walk_through_prepares_the_users_checkpoint(tmp_path):
    folder = tmp_path / "my_resnet"
    folder.mkdir()
    files = doc_files()
    for name, text in files.items():
        (folder / name).write_text(text)
    data = tmp_path / "cifar-10-batches-py"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 12) for i in range(1, 6)), ("test_batch", 40)]:
        x = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        with open(data / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": rng.integers(0, 10, n).tolist()}, f)
    # the user's own training, as the page runs it
    subprocess.run([sys.executable, "train_briefly.py", str(data), "1"], cwd=folder, check=True)
    study = files["study.toml"].replace("~/data/cifar-10-batches-py", str(data))
    study = study.replace("val_size = 5000", "val_size = 20").replace("test_size = 5000", "test_size = 20")
    (folder / "study.toml").write_text(study)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["prepare", str(folder / "study.toml"), "--out", str(out), "--json"],
        env={"DSE_NO_PROGRESS": "1"},
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["stages"]["float"] == "checkpoint" and got["split"] == "official"
    assert len(got["folded_batchnorm"]) == 21 and got["float_batchnorm"] == []  # 19 convs' BNs + 2 shortcuts
    assert [layer["name"] for layer in got["layers"]][:2] == ["conv1", "layers.0.conv1"]
    # dse's float accuracy is the user's network on its own normalised inputs, on the same images
    sys.path.insert(0, str(folder))
    try:
        from resnet_cifar import resnet20  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(folder))
    own = resnet20()
    state = torch.load(folder / "checkpoints" / "resnet20.pth", weights_only=True)["state_dict"]
    own.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    own.eval()
    from dse.prepare import load_prepared

    prepared = load_prepared(out)
    val = prepared.splits.val
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    from dse.data import load_source

    raw = torch.from_numpy(load_source("cifar10", data).x)
    # every validation image is an official test image (test_batch follows the 60 train images), normalised
    assert len(set(_val_rows(raw, val, mean, std))) == 20
    with torch.no_grad():
        correct = int((own(val.tensors[0]).argmax(1) == val.tensors[1]).sum())
    assert got["float_accuracy"] == pytest.approx(correct / len(val.tensors[1]), abs=1e-9)
    from dse.nn import approx_layers

    assert approx_layers(prepared.model)["conv1"].act_rule == "shifted"  # normalised inputs are negative


def _val_rows(raw, val, mean, std):
    """Row of each validation image among the 40 official test images (they must all be there)."""
    test = (raw[60:] - mean).div(std).flatten(1)
    rows = []
    for img in val.tensors[0].flatten(1):
        match = torch.nonzero((test - img).abs().max(1).values < 1e-6).flatten()
        assert len(match) == 1
        rows.append(int(match[0]))
    return rows
