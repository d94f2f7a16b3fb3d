"""Built-in networks, user models by module:function, checkpoints, BatchNorm folding and conversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dse.models import BUILTIN_MODELS, build_model, fold_batchnorm, load_checkpoint
from dse.util import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SHAPES = {"digits_cnn": (1, 8, 8), "lenet5": (1, 28, 28)}


def randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_models_run_and_fold_to_the_same_outputs(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    randomise_bn(model)
    x = torch.rand(3, *SHAPES.get(name, (3, 16, 16)))
    with torch.no_grad():
        ref = model(x)
        assert ref.shape == (3, 10)
        folded = fold_batchnorm(model)
        got = model(x)
    n_bn = 0 if name in SHAPES else len(folded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # every BN was folded
    if name.startswith("resnet"):
        depth = int(name[6:].rstrip("a"))
        # one BN per conv: stem + 2 in each of the (depth - 2) / 2 blocks + 2 projection shortcuts (none
        # in option A, whose shortcuts have no weights)
        assert n_bn == 1 + (depth - 2) + (0 if name.endswith("a") else 2)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_resnet20a_is_19_convolutions_and_one_linear_layer_on_28x28():
    from dse.nn import approx_layers, convert
    from dse.quant import QuantFormat

    m = build_model("resnet20a", input_shape=(1, 28, 28), num_classes=10)
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    kinds = [
        layer.kind for layer in approx_layers(convert(m, QuantFormat(False, "sign-magnitude", True))).values()
    ]
    assert kinds == ["conv"] * 19 + ["linear"]


def test_model_sizes_follow_input_shape():
    m = build_model("lenet5", input_shape=(3, 32, 32), num_classes=7)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    m = build_model("mobilenet_tiny", input_shape=(1, 28, 28))
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    depthwise = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)


def test_convert_nested_models_and_quant_mode_tracks_float():
    from dse.nn import approx_layers, calibrate, convert, set_mode
    from dse.quant import QuantFormat

    torch.manual_seed(0)
    for name in ("resnet8", "mobilenet_tiny"):
        model = build_model(name).eval()
        randomise_bn(model)
        x = torch.rand(8, 3, 16, 16)
        n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
        fold_batchnorm(model)
        with torch.no_grad():
            ref = model(x)
        convert(model, QuantFormat(signed=False, weight_scheme="sign-magnitude", per_channel=True))
        layers = approx_layers(model)
        assert len(layers) == n_layers
        assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
        if name == "resnet8":
            assert "layer2.0.shortcut.0" in layers and "layer1.0.conv1" in layers
        calibrate(model, [x])
        set_mode(model, "quant")
        with torch.no_grad():
            got = model(x)
        rel = float((got - ref).norm() / ref.norm())
        assert rel < 0.1, (name, rel)


def test_user_model_hook(tmp_path):
    (tmp_path / "nets.py").write_text(
        "import torch.nn as nn\n"
        "def small():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
        "def not_a_module():\n    return 'x'\n"
        "def broken():\n    raise ValueError('boom')\n"
    )
    m = build_model("nets.py:small", base_dir=tmp_path)
    assert isinstance(m, nn.Sequential)
    with pytest.raises(UserError, match="returned str, expected a torch nn.Module"):
        build_model("nets.py:not_a_module", base_dir=tmp_path)
    with pytest.raises(UserError, match="raised ValueError: boom"):
        build_model("nets.py:broken", base_dir=tmp_path)
    with pytest.raises(UserError, match="file .*missing.py not found"):
        build_model("missing.py:f", base_dir=tmp_path)
    with pytest.raises(UserError, match="cannot import 'no_such_pkg_q.mod'"):
        build_model("no_such_pkg_q.mod:f")
    with pytest.raises(UserError, match="unknown model 'resnet18'.*lenet5"):
        build_model("resnet18")


def test_checkpoint_that_does_not_fit_is_an_error(tmp_path):
    lenet = build_model("lenet5")
    torch.save({"state_dict": lenet.state_dict()}, tmp_path / "lenet.pt")
    other = build_model("lenet5")
    load_checkpoint(other, tmp_path / "lenet.pt")
    assert torch.equal(other.conv1.weight, lenet.conv1.weight)
    with pytest.raises(UserError, match=r"lenet\.pt does not fit the model"):
        load_checkpoint(build_model("digits_cnn"), tmp_path / "lenet.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(other, tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        load_checkpoint(other, tmp_path / "junk.pt")
