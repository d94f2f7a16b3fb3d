"""The one training loop, `fit`, shared by every stage: float training, QAT, AGN training (its σ_l in
their own parameter group, its regulariser through `extra_loss`) and retraining; plus `evaluate_accuracy`,
the one accuracy measure everyone uses.

Deterministic on CPU: the shuffle and the augmentation of epoch e use a generator seeded with
(seed, e) (or one generator seeded with `seed` for all epochs, `reseed_each_epoch=False`), and the global
torch RNG (noise layers) is seeded once. Resuming is `fit`'s too: with `resume_path`, the state after each
epoch (weights, optimizer, schedule, both RNG states) is saved, so a run resumed after a kill ends with the
same weights as one that was never interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from dse.util import UserError, atomic_torch_save, load_checkpoint, log, progress


@dataclass
class FitResult:
    """history: one dict per epoch {epoch, loss, train_accuracy, val_accuracy|None, seconds}."""

    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def val_accuracy(self) -> float | None:
        return self.history[-1]["val_accuracy"] if self.history else None


@dataclass(frozen=True)
class ParamGroup:
    """Parameters trained with their own learning rate (the schedule scales every group alike); those
    that do not require grad are left out."""

    params: Sequence[nn.Parameter]
    lr: float


def dataset_tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a TensorDataset, or of any indexable dataset of (x, y) pairs (stacked)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[0], dataset.tensors[1]
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, dataset: Any, batch_size: int = 512, device: str | torch.device = "cpu"
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of `model` on `dataset`, in eval mode, in fixed order.
    Restores the model's train/eval state afterwards."""
    device = torch.device(device)
    x, y = dataset_tensors(dataset)
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(y), batch_size):
            xb = x[i : i + batch_size].to(device, non_blocking=True)
            pred = model(xb).argmax(1).cpu()
            correct += int((pred == y[i : i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / len(y)


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def fit(
    model: nn.Module,
    train_set: Any,
    val_set: Any = None,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: str = "cosine",
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    param_groups: Sequence[ParamGroup] | None = None,
    reseed_each_epoch: bool = True,
    status: Callable[[], str] | None = None,
    desc: str = "train",
    lr_setting: str = "train.lr",
    resume_path: Path | None = None,
    resume_key: str = "",
    eval_batch_size: int = 512,
) -> FitResult:
    """Train `model` in place with cross-entropy (+ `extra_loss(model)` when given) for `epochs` epochs.

    param_groups: the parameters to optimise, each group with its learning rate (default: one group, all
    parameters that require grad, at `lr`). optimizer: "adam" | "sgd" (momentum, nesterov). schedule:
    "cosine" (per step, to 0) | "constant". augment(x, generator) -> x is applied to train batches, with
    the shuffle's generator. reseed_each_epoch: epoch e shuffles with a generator seeded (seed, e); False:
    one generator seeded with `seed` shuffles every epoch in turn. status() -> text is appended to the
    progress bar and to each epoch's log line. With `resume_path`, the state after every epoch is saved
    there (atomically) and a later call with the same `resume_key` continues from it; the file is removed
    when training finishes. NaN/inf loss raises UserError naming the epoch (and `lr_setting`, the setting
    to lower). Seeds the global torch RNG with `seed`; leaves the model in eval mode.
    """
    device = torch.device(device)
    model.to(device)
    x_all, y_all = dataset_tensors(train_set)
    x_all, y_all = x_all.to(device), y_all.to(device)
    n = len(y_all)
    if n == 0:
        raise UserError(f"{desc}: the training split is empty")
    steps_per_epoch = math.ceil(n / batch_size)
    if param_groups is None:
        param_groups = [ParamGroup(list(model.parameters()), lr)]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in g.params if p.requires_grad], "lr": g.lr} for g in param_groups
    ]
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(
            groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
        )
    else:
        raise UserError(f"train.optimizer: expected 'adam' or 'sgd', got {optimizer!r}")
    total = max(1, epochs * steps_per_epoch)
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    elif schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    else:
        raise UserError(f"train.schedule: expected 'cosine' or 'constant', got {schedule!r}")

    result = FitResult()
    start_epoch = 0
    stream = None if reseed_each_epoch else torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if resume_path is not None and Path(resume_path).exists():
        state = load_checkpoint(resume_path, "training resume checkpoint", map_location=device)
        if state.get("key") == resume_key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            if stream is not None:
                stream.set_state(state["shuffle_rng"])
            start_epoch = state["epoch"]
            result.history = state["history"]
            log(f"{desc}: resuming after epoch {start_epoch}/{epochs}")

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        gen = stream if stream is not None else _generator(seed, epoch)
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        # a one-epoch fit (the retrain loop's, whose desc already names its epoch) says no "epoch 1/1"
        of_epochs = f" epoch {epoch + 1}/{epochs}" if epochs > 1 else ""
        bar = progress(range(steps_per_epoch), desc=f"{desc}{of_epochs}", leave=False)
        for step in bar:
            idx = perm[step * batch_size : (step + 1) * batch_size]
            xb, yb = x_all[idx], y_all[idx]
            if augment is not None:
                xb = augment(xb, gen)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(yb)
            correct += (out.detach().argmax(1) == yb).sum()
            seen += len(yb)
            if step % 10 == 9 or step == steps_per_epoch - 1:
                mean_loss = float(loss_sum) / seen
                if not math.isfinite(mean_loss):
                    bar.close()
                    raise UserError(
                        f"{desc}: the loss became {mean_loss} in epoch {epoch + 1} of {epochs}; "
                        f"lower the learning rate ({lr_setting}) or check the data"
                    )
                postfix = {"loss": f"{mean_loss:.4f}", "acc": f"{int(correct) / seen:.3f}"}
                if status is not None:
                    postfix["status"] = status()
                bar.set_postfix(postfix)
        bar.close()
        val_acc = evaluate_accuracy(model, val_set, eval_batch_size, device) if val_set is not None else None
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "loss": float(loss_sum) / seen,
            "train_accuracy": int(correct) / seen,
            "val_accuracy": val_acc,
            "seconds": seconds,
        }
        result.history.append(row)
        val_txt = f", val acc {val_acc:.4f}" if val_acc is not None else ""
        status_txt = f", {status()}" if status is not None else ""
        log(
            f"{desc}{of_epochs}: loss {row['loss']:.4f}, train acc {row['train_accuracy']:.4f}"
            f"{val_txt}{status_txt} ({seconds:.1f} s)"
        )
        if resume_path is not None and epoch + 1 < epochs:
            atomic_torch_save(
                {
                    "key": resume_key,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "shuffle_rng": stream.get_state() if stream is not None else None,
                    "history": result.history,
                },
                Path(resume_path),
            )
    model.eval()
    if resume_path is not None:
        Path(resume_path).unlink(missing_ok=True)
    return result
