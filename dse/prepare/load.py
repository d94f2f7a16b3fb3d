"""A prepared run as later stages use it: `Prepared` (the QAT model in `quant` mode, its splits, layers,
format and search space), loaded from the run directory by `load_prepared`, or by `open_run`, which
prepares first where needed."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dse.data import Splits, load_splits
from dse.multipliers import Library, Multiplier
from dse.nn import LayerInfo, Mode, layer_infos, set_mode
from dse.prepare.records import PrepareResult
from dse.prepare.stage import prepare, quantized_model, run_dir_target
from dse.quant import QuantFormat
from dse.rundir import RunDir, stage_key
from dse.study import SearchSpace, Study, load_study
from dse.train import dataset_tensors
from dse.util import UNREADABLE_CHECKPOINT, UserError, load_checkpoint, resolve_device

__all__ = ["Prepared", "is_prepared", "load_prepared", "open_run"]


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
        """The built-ins plus the user library (the search space's `library`, else $DSE_LIBRARY / default)."""
        return self.search_space.load_library()

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


def is_prepared(run_dir: str | Path | RunDir) -> bool:
    """True when the run directory holds a finished prepare stage (QAT checkpoint + its evaluation)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    try:
        result = json.loads(run.result_json.read_text())
        key = load_checkpoint(run.qat_ckpt, "QAT checkpoint").get("inputs_sha256")
    except UserError:
        raise  # a crafted checkpoint is refused, not taken for "not prepared"
    except UNREADABLE_CHECKPOINT:  # missing, truncated or foreign files (ValueError: bad JSON)
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
    ckpt = load_checkpoint(run.qat_ckpt, "QAT checkpoint")
    model = quantized_model(study, splits, fmt, ckpt.get("folded_batchnorm", []))
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
    if run_dir_target(target) is not None:
        assert target is not None
        run = RunDir(target)
        if not is_prepared(run):
            prepare(run.read_study(), out=run.path, data=data, device=device)
        return load_prepared(run, data=data, device=device)
    study = load_study(target)
    run = RunDir(out if out is not None else Path("runs") / study.name)
    prepare(study, out=run.path, data=data, device=device)
    return load_prepared(run, data=data, device=device)
