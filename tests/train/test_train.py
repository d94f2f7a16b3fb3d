"""The shared training loop: deterministic on CPU, resumable bit for bit, NaN loss named by epoch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dse.train import ParamGroup, evaluate_accuracy, fit
from dse.util import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long() + 2 * (x[:, 0, 0, 0] > 0.5).long()
    return TensorDataset(x, y)


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fit_is_deterministic_and_learns():
    data = toy_data()
    kw = dict(epochs=6, lr=0.02, batch_size=16, device="cpu", seed=1)
    a, b = toy_model(), toy_model()
    before = evaluate_accuracy(a, data)
    res = fit(a, data, data, **kw)
    fit(b, data, data, **kw)
    assert torch.equal(params(a), params(b))
    assert len(res.history) == 6 and res.history[-1]["val_accuracy"] == evaluate_accuracy(a, data)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert evaluate_accuracy(a, data) > before
    c = toy_model()
    fit(c, data, **{**kw, "seed": 2})
    assert not torch.equal(params(a), params(c))  # the seed matters


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    data = toy_data()
    kw = dict(
        lr=0.02,
        batch_size=16,
        device="cpu",
        seed=3,
        augment=lambda x, g: x + 0.01 * torch.rand(x.shape, generator=g),
    )
    ref = toy_model()
    fit(ref, data, epochs=5, **kw)

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def stop_in_epoch_4(model):
        calls["n"] += 1
        if calls["n"] > 3 * 6:  # 6 steps per epoch: stop during the 4th epoch
            raise Stop
        return torch.zeros(())

    ckpt = tmp_path / "partial.pt"
    m = toy_model()
    with pytest.raises(Stop):
        fit(m, data, epochs=5, extra_loss=stop_in_epoch_4, resume_path=ckpt, resume_key="k", **kw)
    assert ckpt.exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3
    resumed = toy_model(seed=99)  # different init: everything must come from the checkpoint
    res = fit(resumed, data, epochs=5, resume_path=ckpt, resume_key="k", **kw)
    assert torch.equal(params(resumed), params(ref))
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5]
    assert not ckpt.exists()  # removed when training finished
    # a checkpoint of other inputs (another key) is ignored
    torch.save({"key": "other", "epoch": 4}, ckpt)
    fresh = toy_model()
    fit(fresh, data, epochs=5, resume_path=ckpt, resume_key="k", **kw)
    assert torch.equal(params(fresh), params(ref))


def test_param_groups_and_one_shuffle_stream_resume_bit_for_bit(tmp_path):
    """AGN training's settings: two parameter groups with their own lr, one shuffle generator for all
    epochs, a constant schedule; a run killed in epoch 3 and resumed ends with the uninterrupted weights."""
    data = toy_data()

    def groups(model):
        first, *rest = model.parameters()
        return [ParamGroup([first], 0.05), ParamGroup(rest, 0.01)]

    kw = dict(lr=0.01, batch_size=16, device="cpu", seed=4, schedule="constant", reseed_each_epoch=False)
    ref = toy_model()
    fit(ref, data, epochs=4, param_groups=groups(ref), **kw)
    other = toy_model()
    fit(other, data, epochs=4, **kw)
    assert not torch.equal(params(ref), params(other))  # the groups' learning rates matter

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def stop_in_epoch_3(model):
        calls["n"] += 1
        if calls["n"] > 2 * 6:
            raise Stop
        return torch.zeros(())

    ckpt = tmp_path / "partial.pt"
    m = toy_model()
    with pytest.raises(Stop):
        fit(m, data, epochs=4, param_groups=groups(m), extra_loss=stop_in_epoch_3, resume_path=ckpt,
            resume_key="k", **kw)  # fmt: skip
    resumed = toy_model(seed=99)
    fit(resumed, data, epochs=4, param_groups=groups(resumed), resume_path=ckpt, resume_key="k", **kw)
    assert torch.equal(params(resumed), params(ref))


def test_nan_loss_names_the_epoch():
    data = toy_data()
    model = toy_model()

    def nan_from_epoch_2(m):
        nan_from_epoch_2.steps += 1
        return torch.tensor(float("nan")) if nan_from_epoch_2.steps > 6 else torch.zeros(())

    nan_from_epoch_2.steps = 0
    with pytest.raises(UserError, match=r"qat: the loss became nan in epoch 2 of 3"):
        fit(model, data, epochs=3, lr=0.01, batch_size=16, extra_loss=nan_from_epoch_2, desc="qat")


def test_evaluate_accuracy_keeps_train_state_and_counts_exactly():
    x = torch.eye(4).reshape(4, 1, 2, 2)
    data = TensorDataset(x, torch.tensor([0, 1, 2, 0]))
    model = nn.Flatten()
    model.train()
    assert evaluate_accuracy(model, data, batch_size=3) == 0.75
    assert model.training
