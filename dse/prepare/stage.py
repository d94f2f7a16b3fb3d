"""`prepare`: float training (or the study's checkpoint), BatchNorm folding, conversion, calibration and
QAT, then the float / quantized / exact-table accuracies (`PrepareResult`, prepare/result.json).

Each step is cached in the run directory by the sha256 of its inputs (`dse.rundir.stage_key`): float.pt
by the model, data and float budget; qat.pt by float.pt's key, the operand format and the QAT budget;
result.json by qat.pt's key. Training resumes from prepare/<step>.partial.pt (`dse.train.fit`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from dse.data import Splits, load_splits
from dse.models import build_model, check_forward, fold_batchnorm, load_checkpoint, unfolded_batchnorm
from dse.nn import Mode, approximated, calibrate, convert, layer_infos, set_mode
from dse.prepare.records import PreparedFormat, PreparedLayer, PrepareResult
from dse.quant import QuantFormat
from dse.rundir import RunDir, stage_key
from dse.study import Study, builtin_studies, load_study
from dse.train import dataset_tensors, evaluate_accuracy, fit
from dse.util import atomic_torch_save, atomic_write_json, log, resolve_device, sha256_file

__all__ = ["prepare", "quantized_model", "run_dir_target"]


# ----------------------------------------------------------------------------------------------- helpers


def _calibration_batches(
    splits: Splits, study: Study, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = dataset_tensors(splits.train)
    bs = study.train.batch_size
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(study.train.seed + 7))
    idx = perm[: bs * study.train.calibration_batches]
    return [(x[idx[i : i + bs]].to(device), y[idx[i : i + bs]].to(device)) for i in range(0, len(idx), bs)]


def float_epochs(study: Study) -> int:
    """Float training epochs: `[train] epochs`, else 0 with a checkpoint (used as it is) and 10 without."""
    if study.train.epochs is not None:
        return study.train.epochs
    return 0 if study.model.checkpoint else 10


def _fold_checked(model: torch.nn.Module, sample: torch.Tensor) -> list[str]:
    """Fold BatchNorm into the preceding convs if the folded network computes the same outputs on
    `sample` (eval mode); otherwise leave the model alone (BN then stays a float layer). -> folded names."""
    model.eval()
    trial = copy.deepcopy(model)
    names = fold_batchnorm(trial)
    if not names:
        return []
    with torch.no_grad():
        ref, got = model(sample), trial(sample)
    err = float((ref - got).abs().max())
    tol = 1e-3 * max(1.0, float(ref.abs().max()))
    if err > tol:
        log(f"prepare: BatchNorm not folded (folded outputs differ by {err:.3g}); BN stays in float")
        return []
    fold_batchnorm(model)
    left = unfolded_batchnorm(model)
    if left:
        log(f"prepare: {len(left)} BatchNorm layer(s) not foldable, they stay in float: {', '.join(left)}")
    return names


def quantized_model(study: Study, splits: Splits, fmt: QuantFormat, folded: list[str]) -> torch.nn.Module:
    """A fresh model, folded like the prepared one and converted: ready for the QAT state_dict."""
    model = build_model(
        study.model.name,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        base_dir=study.base_dir,
    )
    if folded:
        fold_batchnorm(model)
    return convert(model, fmt)


def _train_kwargs(study: Study, device: torch.device) -> dict[str, Any]:
    t = study.train
    return dict(
        batch_size=t.batch_size,
        device=device,
        seed=t.seed,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        eval_batch_size=t.eval_batch_size,
    )


# ----------------------------------------------------------------------------------------------- prepare


def run_dir_target(target: Study | str | Path | None) -> RunDir | None:
    """`target` as a run directory, if it is one. A bare built-in study name ("digits") always means the
    study, even when the current folder holds a run directory of that name; "./digits" means the folder."""
    if target is None or isinstance(target, Study):
        return None
    if isinstance(target, str) and "/" not in target and target in builtin_studies():
        return None
    run = RunDir(target)
    return run if run.is_run_dir() else None


def prepare(
    study: Study | str | Path | None = None,
    out: str | Path | None = None,
    data: str | Path | None = None,
    device: str = "auto",
) -> PrepareResult:
    """Float training (or the study's checkpoint), BN folding, conversion, calibration, QAT, and the
    float / quantized / exact-table accuracies on the validation split. Returns (and stores in
    prepare/result.json) what `dse prepare --json` prints. Stages whose inputs did not change are loaded."""
    t_start = time.perf_counter()
    if not isinstance(study, Study):
        if run_dir_target(study) is not None:  # `dse prepare runs/digits`
            assert study is not None
            out = out if out is not None else study
            study = RunDir(study).read_study()
        else:
            study = load_study(study)
    study = study.resolved(data)
    run = RunDir(out if out is not None else Path("runs") / study.name)
    dev = resolve_device(device)
    space_cfg = study.load_search_space()
    fmt = space_cfg.quant_format(study.train.per_channel)

    splits = load_splits(study.data, base_dir=study.base_dir)
    data_id = {k: splits.info[k] for k in ("data_sha256", "index_sha256", "seed")}
    if "mean" in splits.info:  # the normalised images are other inputs (absent: the keys of before)
        data_id["normalisation"] = [splits.info["mean"], splits.info["std"]]
    stages: dict[str, str] = {}
    seconds: dict[str, float] = {}

    # ---- float stage
    t = study.train
    ckpt_path = Path(study.model.checkpoint) if study.model.checkpoint else None
    checkpoint_sha = sha256_file(ckpt_path) if ckpt_path is not None and ckpt_path.is_file() else None
    epochs = float_epochs(study)
    float_key = stage_key(
        "float", study.model.model_dump(), checkpoint_sha, data_id, study.data.augment, epochs, t.batch_size, t.lr,
        t.optimizer, t.weight_decay, t.seed,
    )  # fmt: skip
    torch.manual_seed(t.seed)
    model = build_model(
        study.model.name,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        base_dir=study.base_dir,
    )
    if ckpt_path is not None:  # a checkpoint that does not fit fails here, before anything is written
        load_checkpoint(model, ckpt_path)
    check_forward(model, dataset_tensors(splits.val)[0][:2], splits.num_classes, study.model.name)
    run.prepare_dir.mkdir(parents=True, exist_ok=True)
    run.write_study(study)
    atomic_write_json(run.splits_json, splits.info)
    t0 = time.perf_counter()
    cached = run.read_stage_checkpoint(run.float_ckpt, float_key)
    if cached is not None:
        model.load_state_dict(cached["state_dict"])
        stages["float"] = "cached"
    else:
        if study.model.checkpoint:  # loaded above
            stages["float"] = "checkpoint"
        if epochs > 0:  # train, or fine-tune the checkpoint
            fit(
                model,
                splits.train,
                splits.val,
                epochs=epochs,
                lr=t.lr,
                augment=splits.augment,
                desc="float",
                resume_path=run.float_partial,
                resume_key=float_key,
                **_train_kwargs(study, dev),
            )
            stages["float"] = "fine-tuned" if study.model.checkpoint else "trained"
        atomic_torch_save({"state_dict": model.state_dict(), "inputs_sha256": float_key}, run.float_ckpt)
    model.to(dev).eval()
    float_accuracy = evaluate_accuracy(model, splits.val, t.eval_batch_size, dev)
    float_test_accuracy = evaluate_accuracy(model, splits.test, t.eval_batch_size, dev)
    seconds["float"] = time.perf_counter() - t0

    # ---- QAT stage
    qat_lr = t.qat_lr if t.qat_lr is not None else t.lr / 10
    qat_key = stage_key(
        "qat", float_key, space_cfg.format, space_cfg.weight_scheme, t.per_channel, t.qat_epochs, qat_lr,
        t.calibration_batches,
    )  # fmt: skip
    t0 = time.perf_counter()
    cached = run.read_stage_checkpoint(run.qat_ckpt, qat_key)
    if cached is not None:
        folded = cached["folded_batchnorm"]
        model = quantized_model(study, splits, fmt, folded)
        model.load_state_dict(cached["state_dict"])
        model.to(dev)
        stages["qat"] = "cached"
    else:
        sample = dataset_tensors(splits.val)[0][: t.eval_batch_size].to(dev)
        folded = _fold_checked(model, sample)
        convert(model, fmt)
        model.to(dev)
        set_mode(model, Mode.QUANT)
        calibrate(model, _calibration_batches(splits, study, dev))
        if t.qat_epochs > 0:
            fit(
                model,
                splits.train,
                splits.val,
                epochs=t.qat_epochs,
                lr=qat_lr,
                augment=splits.augment,
                desc="qat",
                resume_path=run.qat_partial,
                resume_key=qat_key,
                **_train_kwargs(study, dev),
            )
        atomic_torch_save(
            {"state_dict": model.state_dict(), "folded_batchnorm": folded, "inputs_sha256": qat_key},
            run.qat_ckpt,
        )
        stages["qat"] = "trained"
    seconds["qat"] = time.perf_counter() - t0

    # ---- accuracies
    result_key = stage_key("result", qat_key)
    cached_result = run.read_stage_json(run.result_json, result_key)
    if cached_result is not None and stages["qat"] == "cached":
        return dataclasses.replace(
            PrepareResult.from_json(cached_result),
            stages={**stages, "evaluate": "cached"},
            seconds={**seconds, "total": time.perf_counter() - t_start},
        )
    t0 = time.perf_counter()
    model.eval()
    set_mode(model, Mode.QUANT)
    quant_accuracy = evaluate_accuracy(model, splits.val, t.eval_batch_size, dev)
    quant_test_accuracy = evaluate_accuracy(model, splits.test, t.eval_batch_size, dev)
    with approximated(model, {}):
        lut_exact_accuracy = evaluate_accuracy(model, splits.val, t.eval_batch_size, dev)
        lut_exact_test_accuracy = evaluate_accuracy(model, splits.test, t.eval_batch_size, dev)
    stages["evaluate"] = "computed"
    seconds["evaluate"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    layers = tuple(PreparedLayer.of(info) for info in layer_infos(model))
    result = PrepareResult(
        study=study.name,
        run_dir=str(run.path),
        format=PreparedFormat(
            format=space_cfg.format, weight_scheme=space_cfg.weight_scheme, per_channel=t.per_channel
        ),
        float_accuracy=float_accuracy,
        quant_accuracy=quant_accuracy,
        lut_exact_accuracy=lut_exact_accuracy,
        float_test_accuracy=float_test_accuracy,
        quant_test_accuracy=quant_test_accuracy,
        splits=splits.info["sizes"],
        folded_batchnorm=tuple(folded),
        layers=layers,
        total_macs=sum(layer.macs for layer in layers),
        device=str(dev),
        stages=stages,
        seconds=seconds,
        lut_exact_test_accuracy=lut_exact_test_accuracy,
        float_batchnorm=tuple(unfolded_batchnorm(model)),
        split=str(splits.info.get("split", "pool")),
    )
    run.write_stage_json(run.result_json, result_key, result.to_json())
    return result
