"""The user's own network as people bring it: a hook file importing its sibling modules, checkpoints
saved from DataParallel or wrapped with training state, BatchNorm registered anywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dse.models import build_model, fold_batchnorm, load_checkpoint, unfolded_batchnorm
from dse.util import UserError


def test_hook_file_imports_its_sibling_module(tmp_path):
    (tmp_path / "blocks_sib_q.py").write_text(
        "import torch.nn as nn\ndef head(n):\n    return nn.Sequential(nn.Flatten(), nn.Linear(n, 10))\n"
    )
    (tmp_path / "mynet.py").write_text("from blocks_sib_q import head\ndef net():\n    return head(64)\n")
    model = build_model("mynet.py:net", base_dir=tmp_path)
    assert isinstance(model[1], nn.Linear) and model[1].in_features == 64
    import sys

    assert str(tmp_path) not in sys.path  # the folder is on sys.path only while the hook is imported


def test_hook_that_raises_on_import_is_one_line(tmp_path):
    (tmp_path / "bad_hook.py").write_text("raise RuntimeError('no GPU here\\nsecond line')\n")
    with pytest.raises(UserError, match=r"cannot import .*RuntimeError: no GPU here second line") as e:
        build_model("bad_hook.py:net", base_dir=tmp_path)
    assert "\n" not in str(e.value)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.bn(self.conv(x))), 1))


def test_dataparallel_and_wrapped_checkpoints_load_as_they_are(tmp_path):
    torch.manual_seed(0)
    trained = Net()
    with torch.no_grad():
        trained.bn.running_mean.uniform_()
    prefixed = {f"module.{k}": v for k, v in trained.state_dict().items()}  # as nn.DataParallel saves
    torch.save(prefixed, tmp_path / "dp.pt")
    torch.save({"state_dict": prefixed, "epoch": 180, "best_prec1": 91.7}, tmp_path / "wrapped.pt")
    for name in ("dp.pt", "wrapped.pt"):
        fresh = Net()
        load_checkpoint(fresh, tmp_path / name)
        for k, v in trained.state_dict().items():
            assert torch.equal(fresh.state_dict()[k], v), (name, k)


def test_checkpoint_that_does_not_fit_names_the_first_missing_and_unexpected_keys(tmp_path):
    state = Net().state_dict()
    state["head.weight"] = state.pop("fc.weight")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "renamed.pt")
    with pytest.raises(
        UserError, match=r"1 missing, first 'fc\.weight'; 1 unexpected, first 'head\.weight'"
    ) as e:
        load_checkpoint(Net(), tmp_path / "renamed.pt")
    assert "\n" not in str(e.value)
    state = Net().state_dict()
    state["fc.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(UserError, match=r"fc\.weight: shape \[3, 3\] in the checkpoint, \[10, 256\]"):
        load_checkpoint(Net(), tmp_path / "shape.pt")
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(UserError, match="holds no state_dict"):
        load_checkpoint(Net(), tmp_path / "nostate.pt")


class BnFirst(nn.Module):
    """Registers each BN before its conv (and in another container), so BN is not the conv's next child."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8)])
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, bias=False)])
        self.bn_in = nn.BatchNorm2d(3)  # normalises the input, not a conv's output: cannot be folded
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_in(x)
        for conv, bn in zip(self.convs, self.norms):
            x = F.relu(bn(conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_batchnorm_registered_before_its_conv_is_folded_through_the_graph():
    torch.manual_seed(1)
    model = BnFirst()
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.randn(16, 3, 8, 8) * 2 + 1)
    for bn in model.norms:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    folded = fold_batchnorm(model)
    assert folded == ["norms.0", "norms.1"]
    assert all(isinstance(m, nn.Identity) for m in model.norms)
    assert unfolded_batchnorm(model) == ["bn_in"]  # stays in float
    assert torch.allclose(model(x), ref, atol=1e-5)
    assert model.convs[1].bias is not None  # the folded BN's shift became the conv's bias


def test_conv_whose_output_is_also_read_elsewhere_is_not_folded():
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    model = Branch().eval()
    assert fold_batchnorm(model) == [] and unfolded_batchnorm(model) == ["bn"]


def test_batchnorm_registered_after_the_wrong_conv_is_folded_into_its_own():
    class ConvsThenNorms(nn.Module):
        """conv1, conv2, bn1, bn2: registration order would pair conv2 with bn1."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    torch.manual_seed(2)
    model = ConvsThenNorms()
    model.train()
    model(torch.randn(8, 4, 6, 6) * 3 + 2)
    model.eval()
    x = torch.randn(2, 4, 6, 6)
    ref = model(x)
    assert fold_batchnorm(model) == ["bn1", "bn2"]
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_untraceable_model_folds_by_registration_order():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
                x = x * 2
            return self.bn(self.conv(x))

    model = Dynamic().eval()
    x = torch.rand(2, 1, 6, 6)
    ref = model(x)
    assert fold_batchnorm(model) == ["bn"] and torch.allclose(model(x), ref, atol=1e-5)
