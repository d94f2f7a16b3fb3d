"""The prepare stage: float training, BatchNorm folding, conversion to approximate layers, calibration and
QAT, and the accuracies every later stage starts from.

`prepare` writes prepare/float.pt, prepare/qat.pt and prepare/result.json (a `PrepareResult`) into the run
directory (`dse.rundir.RunDir`); a stage whose inputs did not change is loaded, not recomputed, and an
interrupted training resumes from its last finished epoch (prepare/*.partial.pt). `load_prepared` gives a
later stage the prepared model and its context (`Prepared`); `open_run` prepares first where needed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dse.data import Splits, load_splits
from dse.models import build_model, fold_batchnorm, load_checkpoint
from dse.multipliers import Library, Multiplier, load_library
from dse.nn import LayerInfo, Mode, approximated, calibrate, convert, layer_infos, set_mode
from dse.quant import QuantFormat
from dse.rundir import RunDir, stage_key
from dse.study import SearchSpace, Study, builtin_studies, load_study
from dse.train import dataset_tensors, evaluate_accuracy, fit
from dse.util import UserError, atomic_torch_save, atomic_write_json, log, resolve_device, sha256_file

__all__ = [
    "PrepareResult",
    "PreparedFormat",
    "PreparedLayer",
    "Prepared",
    "prepare",
    "load_prepared",
    "is_prepared",
    "open_run",
]


# ------------------------------------------------------------------------------------ the stage's result


@dataclass(frozen=True)
class PreparedFormat:
    """The operand format the run was quantized in (`format`: signed | unsigned)."""

    format: str
    weight_scheme: str
    per_channel: bool


@dataclass(frozen=True)
class PreparedLayer:
    """One approximable layer as prepare/result.json lists it; `macs` per sample."""

    name: str
    kind: str
    macs: int
    fan_in: int
    weight_shape: tuple[int, ...]

    @staticmethod
    def of(info: LayerInfo) -> PreparedLayer:
        if info.macs is None:
            raise ValueError(f"layer {info.name}: MACs unknown (the model has not run a forward)")
        return PreparedLayer(
            name=info.name,
            kind=info.kind,
            macs=int(info.macs),
            fan_in=int(info.fan_in),
            weight_shape=tuple(int(d) for d in info.weight_shape),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "macs": self.macs,
            "fan_in": self.fan_in,
            "weight_shape": list(self.weight_shape),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> PreparedLayer:
        return PreparedLayer(
            name=d["name"],
            kind=d["kind"],
            macs=int(d["macs"]),
            fan_in=int(d["fan_in"]),
            weight_shape=tuple(int(x) for x in d["weight_shape"]),
        )


@dataclass(frozen=True)
class PrepareResult:
    """What `dse prepare --json` prints and prepare/result.json holds (plus the stage's `inputs_sha256`).

    Accuracies are fractions on the validation split (`*_test_accuracy`: the test split): float network,
    exactly quantized (`quant`), and through the exact table (`lut`, equal to quant by construction).
    `splits`: images per split; `stages`: per stage whether it was trained / cached / computed;
    `seconds`: per stage and `total`, of this call."""

    study: str
    run_dir: str
    format: PreparedFormat
    float_accuracy: float
    quant_accuracy: float
    lut_exact_accuracy: float
    float_test_accuracy: float
    quant_test_accuracy: float
    splits: dict[str, int]
    folded_batchnorm: tuple[str, ...]
    layers: tuple[PreparedLayer, ...]
    total_macs: int
    device: str
    stages: dict[str, str]
    seconds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """The JSON document, keys in the order result.json has always had."""
        return {
            "study": self.study,
            "run_dir": self.run_dir,
            "format": dataclasses.asdict(self.format),
            "float_accuracy": self.float_accuracy,
            "quant_accuracy": self.quant_accuracy,
            "lut_exact_accuracy": self.lut_exact_accuracy,
            "float_test_accuracy": self.float_test_accuracy,
            "quant_test_accuracy": self.quant_test_accuracy,
            "splits": dict(self.splits),
            "folded_batchnorm": list(self.folded_batchnorm),
            "layers": [layer.to_json() for layer in self.layers],
            "total_macs": self.total_macs,
            "device": self.device,
            "stages": dict(self.stages),
            "seconds": dict(self.seconds),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> PrepareResult:
        """From the JSON document (a stored `inputs_sha256` is ignored)."""
        return PrepareResult(
            study=d["study"],
            run_dir=d["run_dir"],
            format=PreparedFormat(**d["format"]),
            float_accuracy=float(d["float_accuracy"]),
            quant_accuracy=float(d["quant_accuracy"]),
            lut_exact_accuracy=float(d["lut_exact_accuracy"]),
            float_test_accuracy=float(d["float_test_accuracy"]),
            quant_test_accuracy=float(d["quant_test_accuracy"]),
            splits={k: int(v) for k, v in d["splits"].items()},
            folded_batchnorm=tuple(d["folded_batchnorm"]),
            layers=tuple(PreparedLayer.from_json(x) for x in d["layers"]),
            total_macs=int(d["total_macs"]),
            device=d["device"],
            stages=dict(d["stages"]),
            seconds={k: float(v) for k, v in d["seconds"].items()},
        )


# ------------------------------------------------------------------------------------ the prepared run


@dataclass
class Prepared:
    """A prepared run: the converted, calibrated, QAT-trained model (eval, mode `quant`) and its context."""

    study: Study
    model: torch.nn.Module
    splits: Splits
    layers: list[LayerInfo]  # forward order
    fmt: QuantFormat
    quant_accuracy: float
    float_accuracy: float
    run_dir: RunDir
    device: torch.device
    result: PrepareResult

    @functools.cached_property
    def search_space(self) -> SearchSpace:
        """The study's search space config."""
        return self.study.load_search_space()

    @functools.cached_property
    def library(self) -> Library:
        return load_library()

    @functools.cached_property
    def space(self) -> list[Multiplier]:
        """The search space resolved against the library (library order)."""
        return self.search_space.resolve(self.library)

    @functools.cached_property
    def layer_space(self) -> dict[str, list[Multiplier]]:
        """Allowed multipliers per layer (the space, or the layer's restriction)."""
        return self.search_space.resolve_layers(self.library, [info.name for info in self.layers])

    @property
    def layer_names(self) -> list[str]:
        return [info.name for info in self.layers]


# ----------------------------------------------------------------------------------------------- helpers


def _calibration_batches(
    splits: Splits, study: Study, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = dataset_tensors(splits.train)
    bs = study.train.batch_size
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(study.train.seed + 7))
    idx = perm[: bs * study.train.calibration_batches]
    return [(x[idx[i : i + bs]].to(device), y[idx[i : i + bs]].to(device)) for i in range(0, len(idx), bs)]


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
    return names


def _quantized_model(study: Study, splits: Splits, fmt: QuantFormat, folded: list[str]) -> torch.nn.Module:
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


def _run_dir_target(target: Study | str | Path | None) -> RunDir | None:
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
        if _run_dir_target(study) is not None:  # `dse prepare runs/digits`
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
    run.prepare_dir.mkdir(parents=True, exist_ok=True)
    run.write_study(study)
    atomic_write_json(run.splits_json, splits.info)
    data_id = {k: splits.info[k] for k in ("data_sha256", "index_sha256", "seed")}
    stages: dict[str, str] = {}
    seconds: dict[str, float] = {}

    # ---- float stage
    t = study.train
    ckpt_path = Path(study.model.checkpoint) if study.model.checkpoint else None
    checkpoint_sha = sha256_file(ckpt_path) if ckpt_path is not None and ckpt_path.is_file() else None
    float_key = stage_key(
        "float", study.model.model_dump(), checkpoint_sha, data_id, study.data.augment, t.epochs, t.batch_size, t.lr,
        t.optimizer, t.weight_decay, t.seed,
    )  # fmt: skip
    torch.manual_seed(t.seed)
    model = build_model(
        study.model.name,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        base_dir=study.base_dir,
    )
    t0 = time.perf_counter()
    cached = run.read_stage_checkpoint(run.float_ckpt, float_key)
    if cached is not None:
        model.load_state_dict(cached["state_dict"])
        stages["float"] = "cached"
    else:
        if study.model.checkpoint:
            load_checkpoint(model, Path(study.model.checkpoint))
            stages["float"] = "checkpoint"
        else:
            fit(
                model,
                splits.train,
                splits.val,
                epochs=t.epochs,
                lr=t.lr,
                augment=splits.augment,
                desc="float",
                resume_path=run.float_partial,
                resume_key=float_key,
                **_train_kwargs(study, dev),
            )
            stages["float"] = "trained"
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
        model = _quantized_model(study, splits, fmt, folded)
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
    )
    run.write_stage_json(run.result_json, result_key, result.to_json())
    return result


# ---------------------------------------------------------------------------------------------- loading


def is_prepared(run_dir: str | Path | RunDir) -> bool:
    """True when the run directory holds a finished prepare stage (QAT checkpoint + its evaluation)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    try:
        result = json.loads(run.result_json.read_text())
        key = torch.load(run.qat_ckpt, map_location="cpu", weights_only=False).get("inputs_sha256")
    except Exception:
        return False
    return isinstance(result, dict) and result.get("inputs_sha256") == stage_key("result", key)


def load_prepared(
    run_dir: str | Path | RunDir, data: str | Path | None = None, device: str = "cpu"
) -> Prepared:
    """The prepared model of a run directory (after `prepare`): converted, QAT state loaded, eval, mode
    `quant`; with the splits checked against splits.json (`data` overrides the stored data path)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    study = run.read_study()
    if data not in (None, ""):
        study = study.resolved(data)
    if not is_prepared(run):
        raise UserError(f"{run.path}: not prepared (or prepare did not finish); run `dse prepare {run.path}`")
    result = PrepareResult.from_json(json.loads(run.result_json.read_text()))
    dev = resolve_device(device)
    splits = load_splits(study.data, base_dir=study.base_dir)
    stored = json.loads(run.splits_json.read_text()) if run.splits_json.is_file() else {}
    for k in ("data_sha256", "index_sha256"):
        if stored.get(k) not in (None, splits.info[k]):
            raise UserError(
                f"data.path: the data at {study.data.path or study.data.name} is not the data {run.path} was "
                f"prepared on ({k} differs from splits.json); give the original with --data or prepare again"
            )
    fmt = study.load_search_space().quant_format(study.train.per_channel)
    ckpt = torch.load(run.qat_ckpt, map_location="cpu", weights_only=False)
    model = _quantized_model(study, splits, fmt, ckpt.get("folded_batchnorm", []))
    model.load_state_dict(ckpt["state_dict"])
    model.to(dev).eval()
    set_mode(model, Mode.QUANT)
    with torch.no_grad():  # one forward so that every layer knows its MACs
        model(dataset_tensors(splits.val)[0][:2].to(dev))
    return Prepared(
        study=study,
        model=model,
        splits=splits,
        layers=list(layer_infos(model)),
        fmt=fmt,
        quant_accuracy=result.quant_accuracy,
        float_accuracy=result.float_accuracy,
        run_dir=run,
        device=dev,
        result=result,
    )


def open_run(
    target: str | Path | None = None,
    out: str | Path | None = None,
    data: str | Path | None = None,
    device: str = "auto",
) -> Prepared:
    """What every later command starts with: `target` is a run directory (holding study.toml), a built-in
    study name or a study TOML (None: the default study). Prepares first where needed (cached), then
    loads. A study's run directory is `out` or runs/<study name>."""
    if _run_dir_target(target) is not None:
        assert target is not None
        run = RunDir(target)
        if not is_prepared(run):
            prepare(run.read_study(), out=run.path, data=data, device=device)
        return load_prepared(run, data=data, device=device)
    study = load_study(target)
    run = RunDir(out if out is not None else Path("runs") / study.name)
    prepare(study, out=run.path, data=data, device=device)
    return load_prepared(run, data=data, device=device)
