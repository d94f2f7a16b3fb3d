"""Accuracy recovery by a short retraining of a prepared network under a chosen multiplier assignment.

Methods (P2 and the baselines it is compared with; see docs/REFERENCES.md):
- `behavioral`: forward through the multipliers' tables (`lut` mode, straight-through gradient).
- `errmodel`: P2's per-neuron error model: each approximated layer adds ξ (`dse.retrain.surrogates`), with
  μ_ε, σ_ε, ρ per output neuron measured by behavioural simulation of a small calibration sample
  (`dse.retrain.statistics`): once before training as in P2, and (`refresh_stats`, the default) again on
  the current weights before every later epoch — the per-neuron bias of a sign-magnitude layer follows its
  weights, and a stale one cost up to 0.8 pp on our runs; the re-measurement counts in the epoch time.
- `multiplicative`: Hammad et al.: weights multiplied by Err ~ N(1 + μ_rel, σ_rel²) of the multiplier.
- `awgn`: Hanif et al.: white Gaussian noise at each layer's output at the layer's measured SNR.
- `agn`: plain additive Gaussian noise with the layer's σ of the error (the predicted σ when the
  predictions of `dse.errors.predict` exist for this run, else the σ measured on the calibration sample).

The epochs are `dse.train.fit`, the one training loop, called once per epoch (the learning rate follows
a cosine by epoch, and the statistics are refreshed between epochs). Whatever the method trained with,
accuracies reported here are always measured by behavioural simulation (`dse.simulation.simulate_accuracy`:
`lut` mode with the assignment) on the validation split, before and after.

Run directory: `retrain/<config-hash>/errstats.pt` (the calibration statistics: a rerun reuses them),
`retrain/<config-hash>/<method>.pt` (retrained state_dict + what produced it) and `<method>.json`
(the result, what `dse retrain --json` prints).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dse.data import Split
from dse.hwconfig import resolve_assignment
from dse.multipliers.core import Multiplier
from dse.nn import Mode, approx_layers, approximated, set_mode
from dse.nn.compensation import remedies_of, variant_name
from dse.prepare import Prepared, load_prepared
from dse.retrain.statistics import CALIBRATION_SAMPLES, STATS_VERSION, get_error_stats, measure_error_stats
from dse.retrain.surrogates import METHODS, agn_sigma_source, build_surrogates
from dse.rundir import RunDir
from dse.simulation import ensure_calibration, simulate_accuracy
from dse.train import fit
from dse.util import (
    UserError,
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
    log,
    sha256_bytes,
    sha256_file,
)


@dataclass(frozen=True)
class RetrainResult:
    """What one retraining did; accuracies are fractions on the validation split, by behavioural simulation.
    Stored as `retrain/<config-hash>/<method>.json` (`to_json`, the same object `dse retrain --json` prints)."""

    method: str
    epochs: int
    lr: float
    batch_size: int
    assignment: dict[str, str]
    quant_accuracy: float
    accuracy_before: float
    accuracy_after: float
    seconds_per_epoch: float
    cpu_seconds_per_epoch: float
    stats_seconds: float
    refresh_stats: bool
    checkpoint: str
    config_hash: str
    # agn: "predicted" or "measured: <why>" (`agn_sigma_source`); None for the other methods
    noise_sigma: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RetrainResult:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d or f.name != "noise_sigma"})


# ---------------------------------------------------------------- the prepared run


def load_run(run_dir: Path, data: str | None = None, device: str = "cpu") -> Prepared:
    """The prepared run (`dse.prepare.load_prepared`), with a clear error when `dse prepare` has not run."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise UserError(f"{run.path}: run directory not found")
    if not run.qat_ckpt.exists():
        raise UserError(
            f"{run.path}: no prepared checkpoint ({run.qat_ckpt} is missing); run `dse prepare` first"
        )
    return load_prepared(run.path, data=data, device=device)


def config_hash(
    assignment: Mapping[str, Multiplier],
    run_dir: Path,
    calibration_samples: int,
    remedies: Mapping[str, str] | None = None,
) -> str:
    """12 hex digits naming `retrain/<config-hash>/`: the assignment (names and table hashes, and the
    layers' remedies when any), the QAT checkpoint it starts from and the calibration sample size."""
    key: dict[str, Any] = {
        "assignment": {k: f"{m.name}:{m.sha256}" for k, m in sorted(assignment.items())},
        "checkpoint": sha256_file(RunDir(run_dir).qat_ckpt),
        "calibration_samples": calibration_samples,
        "version": STATS_VERSION,
    }
    if remedies:
        key["remedies"] = dict(sorted(remedies.items()))
    return sha256_bytes(json.dumps(key, sort_keys=True).encode())[:12]


# ---------------------------------------------------------------- training modes


@contextlib.contextmanager
def _surrogate_mode(model: nn.Module, method: str, surrogates: Mapping[str, nn.Module]) -> Iterator[None]:
    """Put the model into the training mode of `method`; empties the layers' errmodel slots afterwards.

    The multiplicative baseline perturbs weights (`_WeightNoiseForward`), so its slots stay empty."""
    layers = approx_layers(model)
    set_mode(model, Mode.ERRMODEL)  # quant arithmetic (ranges frozen) plus the layer's errmodel slot
    for name, layer in layers.items():
        layer.errmodel = None if method == "multiplicative" else surrogates.get(name)
    try:
        yield
    finally:
        for layer in layers.values():
            layer.errmodel = None


def _training_mode(
    model: nn.Module,
    method: str,
    multipliers: Mapping[str, Multiplier],
    surrogates: Mapping[str, nn.Module],
) -> contextlib.AbstractContextManager[Any]:
    """The tables themselves for `behavioral`, the method's surrogates otherwise."""
    if method == "behavioral":
        return approximated(model, multipliers)
    return _surrogate_mode(model, method, surrogates)


class _WeightNoiseForward(nn.Module):
    """Runs `model` with the weights of the named layers multiplied by fresh noise (gradient to the weights)."""

    def __init__(self, model: nn.Module, surrogates: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.surrogates = dict(surrogates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        noisy = {f"{n}.weight": s(params[f"{n}.weight"]) for n, s in self.surrogates.items()}
        out: torch.Tensor = torch.func.functional_call(self.model, noisy, (x,), strict=False)
        return out


# ---------------------------------------------------------------- training


def train_epochs(
    model: nn.Module,
    prepared: Prepared,
    method: str,
    multipliers: Mapping[str, Multiplier],
    surrogates: Mapping[str, nn.Module],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    resume_path: Path | None = None,
    refresh: Callable[[], dict[str, nn.Module]] | None = None,
) -> tuple[list[float], list[float]]:
    """`dse.train.fit`, one call per epoch, in the method's mode; no validation (a surrogate accuracy is
    never looked at). The learning rate steps down a cosine by epoch. `refresh()` (when given) returns
    new surrogates measured on the current weights before every epoch after the first; its time counts
    in that epoch. Returns (wall seconds, CPU seconds of this process) of each epoch; the CPU time is the
    fairer speed measure on a shared machine. With `resume_path`, a killed run continues at the epoch
    it reached (the per-epoch times travel with the weights, so they are not `fit`'s own resume)."""
    key = f"{method}:{epochs}:{lr}:{batch_size}:{seed}:{refresh is not None}"
    times: list[float] = []
    cpu_times: list[float] = []
    start = 0
    if resume_path is not None and resume_path.exists():
        state = load_checkpoint(resume_path, "retraining resume checkpoint")
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            start, times, cpu_times = state["epoch"], state["times"], state["cpu_times"]
    for epoch in range(start, epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        if refresh is not None and epoch > 0:
            surrogates = refresh()
        extra = time.perf_counter() - t0
        net = _WeightNoiseForward(model, surrogates) if method == "multiplicative" else model
        with _training_mode(model, method, multipliers, surrogates):
            result = fit(
                net,
                prepared.splits.train,
                None,
                epochs=1,
                lr=lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs)),
                batch_size=batch_size,
                device=device,
                seed=seed * 1000 + epoch,
                schedule="constant",
                desc=f"retrain {method} epoch {epoch + 1}/{epochs}",
            )
        times.append(extra + float(result.history[-1]["seconds"]))
        cpu_times.append(time.process_time() - c0)
        if resume_path is not None and epoch + 1 < epochs:
            atomic_torch_save(
                {
                    "key": key,
                    "epoch": epoch + 1,
                    "times": times,
                    "cpu_times": cpu_times,
                    "model": model.state_dict(),
                },
                resume_path,
            )
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    model.eval()
    return times, cpu_times


def _on(modules: Mapping[str, nn.Module], device: str) -> dict[str, nn.Module]:
    return {n: m.to(device) for n, m in modules.items()}


def retrain(
    run_dir: Path,
    assignment: Mapping[str, str],
    method: str,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int | None = None,
    calibration_samples: int = CALIBRATION_SAMPLES,
    refresh_stats: bool = True,
    seed: int = 0,
    data: str | None = None,
    device: str = "cpu",
    where: str = "config",
    raw_config: Mapping[str, Any] | None = None,
    prepared: Prepared | None = None,
    rest: str | None = None,
) -> RetrainResult:
    """Retrain the prepared network of `run_dir` for `assignment` with `method`; save checkpoint + result.
    The prepared model (`prepared`, when given) holds its original weights again afterwards. An
    assignment that leaves layers out is refused unless `rest="exact"` (those layers then run exact)."""
    if method not in METHODS:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if not isinstance(epochs, int) or epochs <= 0:
        raise UserError(f"--epochs {epochs}: expected a positive number of epochs")
    if not (lr > 0 and math.isfinite(lr)):
        raise UserError(f"--lr {lr}: expected a positive learning rate")
    run_dir = Path(run_dir)
    if prepared is None:
        prepared = load_run(run_dir, data=data, device=device)
    multipliers = resolve_assignment(assignment, prepared, where=where, raw=raw_config)
    remedies = remedies_of(assignment)[1]  # "NAME+bc" / "NAME+wt": set on the layers for the whole retrain
    missing = [n for n in prepared.layer_names if n not in multipliers]
    if missing and rest != "exact":
        raise UserError(
            f"{where}: the model's layers {', '.join(missing)} are not in the configuration; name them, or "
            "pass --rest exact to run them with the exact multiplier"
        )
    model = prepared.model
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    chash = config_hash(multipliers, run_dir, calibration_samples, remedies)
    out_dir = RunDir(run_dir).retrain_run_dir(chash)
    layers = approx_layers(model)
    calibration = {n: layer.calibration for n, layer in layers.items()}
    if remedies:
        ensure_calibration(prepared)
        for n, r in remedies.items():
            layers[n].remedy = r  # every simulation, training step and error statistic below uses it
    try:
        accuracy_before = simulate_accuracy(prepared, multipliers, Split.VAL, device=device)
        stats_seconds = 0.0
        surrogates: dict[str, nn.Module] = {}
        refresh = None
        noise_sigma = None
        if method != "behavioral":
            stats, stats_seconds = get_error_stats(
                prepared, model, multipliers, out_dir, calibration_samples, device=device
            )
            surrogates = _on(build_surrogates(method, prepared, multipliers, stats), device)
            if method == "agn":
                noise_sigma = agn_sigma_source(prepared, {n: multipliers[n] for n in stats})
                if noise_sigma != "predicted":
                    log(f"retrain agn: the noise σ is {noise_sigma}")
            if refresh_stats and method != "multiplicative":  # the table's relative error never changes
                measured_on: Prepared = prepared

                def refresh() -> dict[str, nn.Module]:
                    now = measure_error_stats(
                        measured_on, model, multipliers, calibration_samples, device=device
                    )
                    return _on(build_surrogates(method, measured_on, multipliers, now), device)

        bs = batch_size or prepared.study.train.batch_size
        resume = out_dir / f"{method}.resume.pt"
        times, cpu_times = train_epochs(
            model, prepared, method, multipliers, surrogates, epochs, lr, bs, seed, device, resume, refresh
        )
        if remedies:  # the correction (and the weight map) of the retrained weights and their activations
            ensure_calibration(prepared, recompute=True)
        accuracy_after = simulate_accuracy(prepared, multipliers, Split.VAL, device=device)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    finally:
        model.load_state_dict(initial)  # the prepared model stays as it was for the caller
        for n, layer in layers.items():
            layer.remedy = None
            if remedies:
                layer.calibration = calibration[n]
    ckpt = out_dir / f"{method}.pt"
    result = RetrainResult(
        method=method,
        epochs=epochs,
        lr=lr,
        batch_size=bs,
        assignment={n: variant_name(m.name, remedies.get(n)) for n, m in multipliers.items()},
        quant_accuracy=float(prepared.quant_accuracy),
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        seconds_per_epoch=sum(times) / len(times),
        cpu_seconds_per_epoch=sum(cpu_times) / len(cpu_times),
        stats_seconds=stats_seconds,
        refresh_stats=refresh is not None,
        checkpoint=str(ckpt),
        config_hash=chash,
        noise_sigma=noise_sigma,
    )
    atomic_torch_save({"state_dict": state, "result": result.to_json()}, ckpt)
    atomic_write_json(out_dir / f"{method}.json", result.to_json())
    return result


def load_retrained(prepared: Prepared, checkpoint: Path) -> nn.Module:
    """The prepared model with the retrained weights of `checkpoint` loaded (in place; returned)."""
    blob = load_checkpoint(Path(checkpoint), "retrained checkpoint")
    prepared.model.load_state_dict(blob["state_dict"])
    return prepared.model
