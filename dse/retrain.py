"""Accuracy recovery by a short retraining of a prepared network under a chosen multiplier assignment.

Methods (SCIENCE.md §2):
- `behavioral`: forward through the multipliers' tables (`lut` mode, straight-through gradient).
- `errmodel`: P2's per-neuron error model: each approximated layer adds ξ (see `dse.errmodel`), with
  μ_ε, σ_ε, ρ per output neuron measured by behavioural simulation of a small calibration sample: once
  before training as in P2, and (`refresh_stats`, the default) again on the current weights before every
  later epoch — the per-neuron bias of a sign-magnitude layer follows its weights, and a stale one cost
  up to 0.8 pp on our runs; the re-measurement counts in the epoch time.
- `multiplicative`: Hammad et al.: weights multiplied by Err ~ N(1 + μ_rel, σ_rel²) of the multiplier.
- `awgn`: Hanif et al.: white Gaussian noise at each layer's output at the layer's measured SNR.
- `agn`: plain additive Gaussian noise with the layer's σ of the error (the predicted σ when the
  predictions of `dse.errors.predict` exist for this run, else the σ measured on the calibration sample).

Whatever the method trained with, accuracies reported here are always measured by behavioural
simulation (`lut` mode with the assignment) on the validation split, before and after.

Run directory: `retrain/<config-hash>/errstats.pt` (the calibration statistics: a rerun reuses them),
`retrain/<config-hash>/<method>.pt` (retrained state_dict + what produced it) and `<method>.json`
(the result, what `dse retrain --json` prints).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dse.errmodel import (
    AwgnNoise,
    GaussianNoise,
    LayerErrorStats,
    MultiplicativeWeightNoise,
    NeuronStatsAccumulator,
    PerNeuronErrorModel,
    relative_error_moments,
)
from dse.util import UserError, atomic_torch_save, atomic_write_json, read_json, sha256_bytes

METHODS = ("behavioral", "errmodel", "multiplicative", "awgn", "agn")
CALIBRATION_SAMPLES = 512
STATS_VERSION = 1


@dataclass(frozen=True)
class RetrainResult:
    """What one retraining did; accuracies are fractions on the validation split, by behavioural simulation."""

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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the assignment (configuration file)


def read_assignment_file(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """({layer: multiplier}, the raw JSON) from a configuration JSON (`dse export`), the minimal shape
    `{"layers": [{"name", "multiplier"}, ...]}` of ARCHITECTURE.md, or a plain {layer: multiplier} object."""
    path = Path(path)
    raw = read_json(path, "configuration JSON")
    try:
        from dse.report.config import read_assignment
    except ImportError:  # the report module is not there: parse the minimal shapes ourselves
        read_assignment = None
    if isinstance(raw, dict) and isinstance(raw.get("layers"), list):
        if read_assignment is not None and "schema_version" in raw:
            try:
                return read_assignment(path), raw
            except UserError:
                pass  # not a complete exported configuration: the minimal shape is enough here
        try:
            return {str(e["name"]): str(e["multiplier"]) for e in raw["layers"]}, raw
        except (KeyError, TypeError):
            raise UserError(f"{path}: layers: expected a list of {{'name', 'multiplier'}} objects") from None
    if (
        isinstance(raw, dict)
        and raw
        and all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items())
    ):
        return dict(raw), raw
    raise UserError(f'{path}: expected a dse configuration or a non-empty object {{"layer": "multiplier"}}')


def resolve_assignment(
    assignment: Mapping[str, str],
    prepared: Any,
    where: str = "config",
    raw: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """{layer: Multiplier} checked against the prepared model and the library (UserError otherwise)."""
    names = [info.name for info in prepared.layers]
    unknown = [name for name in assignment if name not in names]
    model_name = _study_model_name(prepared)
    cfg_model = None
    if raw and isinstance(raw.get("model"), dict):
        cfg_model = raw["model"].get("name")
    if unknown or (cfg_model not in (None, "unknown", model_name)):
        missing = [n for n in names if n not in assignment]
        other = f" (it names model {cfg_model!r}, this run is {model_name!r})" if cfg_model else ""
        raise UserError(
            f"{where}: configuration does not fit this model{other}: layers not in the model: "
            f"{', '.join(unknown) or '-'}; model layers not in the configuration: {', '.join(missing) or '-'}"
            f" (the model's layers are {', '.join(names)})"
        )
    signed = bool(prepared.fmt.signed)
    out = {}
    for layer, mult_name in assignment.items():
        try:
            m = prepared.library.get(mult_name)
        except UserError:
            raise UserError(
                f"{where}: layer {layer}: multiplier {mult_name!r} is not in the library "
                "(see `dse multipliers list`)"
            ) from None
        if bool(m.signed) != signed:
            fmt = "signed" if signed else "unsigned"
            raise UserError(
                f"{where}: layer {layer}: multiplier {mult_name!r} is not {fmt} like this run's format"
            )
        out[layer] = m
    return out


def _study_model_name(prepared: Any) -> str:
    model = getattr(prepared.study, "model", None)
    return str(getattr(model, "name", None) or (model or {}).get("name", "unknown"))


# ---------------------------------------------------------------- run directory helpers


def _qat_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / "prepare" / "qat.pt"


def load_run(run_dir: Path, data: str | None = None, device: str = "cpu") -> Any:
    """The prepared run (`dse.study.load_prepared`), with a clear error when `dse prepare` has not run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not _qat_checkpoint(run_dir).exists():
        raise UserError(
            f"{run_dir}: no prepared checkpoint ({_qat_checkpoint(run_dir)} is missing); run `dse prepare` first"
        )
    from dse.study import load_prepared

    return load_prepared(run_dir, data=data, device=device)


def config_hash(assignment: Mapping[str, Any], run_dir: Path, calibration_samples: int) -> str:
    from dse.util import sha256_file

    key = {
        "assignment": {k: _mult_id(v) for k, v in sorted(assignment.items())},
        "checkpoint": sha256_file(_qat_checkpoint(run_dir)),
        "calibration_samples": calibration_samples,
        "version": STATS_VERSION,
    }
    return sha256_bytes(json.dumps(key, sort_keys=True).encode())[:12]


def _mult_id(m: Any) -> str:
    return f"{m.name}:{m.sha256}" if hasattr(m, "sha256") else str(m)


# ---------------------------------------------------------------- dse.nn glue


def _set_lut(model: nn.Module, multipliers: Mapping[str, Any]) -> None:
    from dse.nn import assign, set_mode

    set_mode(model, "lut")
    assign(model, dict(multipliers))


def _layers(model: nn.Module) -> dict[str, Any]:
    from dse.nn import approx_layers

    return approx_layers(model)


def evaluate_lut(
    prepared: Any, model: nn.Module, multipliers: Mapping[str, Any], device: str = "cpu"
) -> float:
    """Validation accuracy by behavioural simulation with the assignment (the only accuracy we report)."""
    from dse.train import evaluate_accuracy

    _set_lut(model, multipliers)
    model.eval()
    return float(evaluate_accuracy(model, prepared.splits.val, device=device))


# ---------------------------------------------------------------- calibration statistics


def measure_error_stats(
    prepared: Any,
    model: nn.Module,
    multipliers: Mapping[str, Any],
    samples: int = CALIBRATION_SAMPLES,
    batch_size: int = 128,
    device: str = "cpu",
) -> dict[str, LayerErrorStats]:
    """Per-neuron error statistics of every approximated layer, from behavioural simulation.

    The network runs in `lut` mode with the assignment on the first `samples` training images; at each
    approximated layer its actual input is pushed through the exact and the approximate table
    (`int_forward`), so ε is the layer's own error on the inputs it really sees.
    """
    layers = _layers(model)
    active = {n: m for n, m in multipliers.items() if not getattr(m, "is_exact", False)}
    accs = {n: NeuronStatsAccumulator() for n in active}

    def hook_for(name: str):
        def hook(layer, args):
            with torch.no_grad():
                codes = layer.input_codes(args[0])
                exact = layer.dequantize_acc(layer.int_forward(codes, None))
                approx = layer.dequantize_acc(layer.int_forward(codes, active[name]))
                accs[name].add(exact.cpu(), approx.cpu())

        return hook

    handles = [layers[n].register_forward_pre_hook(hook_for(n)) for n in active]
    from dse.train import dataset_tensors

    x_train = dataset_tensors(prepared.splits.train)[0]
    n = min(samples, len(x_train))
    try:
        _set_lut(model, multipliers)
        model.eval()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                model(x_train[start : min(n, start + batch_size)].to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: acc.finish() for name, acc in accs.items()}


def get_error_stats(
    prepared: Any,
    model: nn.Module,
    multipliers: Mapping[str, Any],
    out_dir: Path,
    samples: int = CALIBRATION_SAMPLES,
    device: str = "cpu",
) -> tuple[dict[str, LayerErrorStats], float]:
    """Statistics from `out_dir/errstats.pt` when present, else measured and stored. Returns (stats, seconds)."""
    path = Path(out_dir) / "errstats.pt"
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if blob.get("version") == STATS_VERSION and set(blob["layers"]) == {
            n for n, m in multipliers.items() if not getattr(m, "is_exact", False)
        }:
            return {n: LayerErrorStats.from_dict(d) for n, d in blob["layers"].items()}, 0.0
    t0 = time.perf_counter()
    stats = measure_error_stats(prepared, model, multipliers, samples, device=device)
    seconds = time.perf_counter() - t0
    blob = {
        "version": STATS_VERSION,
        "assignment": {n: m.name for n, m in multipliers.items()},
        "samples": samples,
        "seconds": seconds,
        "layers": {n: s.to_dict() for n, s in stats.items()},
    }
    atomic_torch_save(blob, path)
    return stats, seconds


# ---------------------------------------------------------------- surrogates


def _predicted_sigma(prepared: Any, multipliers: Mapping[str, Any]) -> dict[str, tuple[float, float]] | None:
    """(σ, mean) per layer from the run's σ predictions (`dse.errors.predict`), or None if unavailable."""
    path = Path(prepared.run_dir) / "profiles" / "predictions.json"
    if not path.exists():
        return None
    try:
        from dse.errors.predict import get_predictions

        pred = get_predictions(prepared)
        out = {}
        for name, m in multipliers.items():
            li, mi = pred.layers.index(name), pred.multipliers.index(m.name)
            out[name] = (float(pred.sigma[li][mi]), float(pred.mean[li][mi]))
        return out
    except Exception:  # predictions of another space or not readable: fall back to the measured σ
        return None


def build_surrogates(
    method: str,
    prepared: Any,
    multipliers: Mapping[str, Any],
    stats: Mapping[str, LayerErrorStats],
) -> dict[str, nn.Module]:
    """{layer: module} for the output-noise methods (errmodel, awgn, agn) or the weight-noise one."""
    if method == "errmodel":
        return {n: PerNeuronErrorModel.from_stats(s) for n, s in stats.items()}
    if method == "awgn":
        return {n: AwgnNoise(s.snr_db) for n, s in stats.items()}
    if method == "agn":
        predicted = _predicted_sigma(prepared, {n: multipliers[n] for n in stats}) or {}
        return {
            n: GaussianNoise(predicted[n][0] if n in predicted else s.sigma_err) for n, s in stats.items()
        }
    if method == "multiplicative":
        sign_magnitude = getattr(prepared.fmt, "weight_scheme", "") == "sign-magnitude"
        out = {}
        for n in stats:
            m = multipliers[n]
            mean, std = relative_error_moments(m.lut, bool(m.signed), weight_magnitude_only=sign_magnitude)
            out[n] = MultiplicativeWeightNoise(mean, std)
        return out
    raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")


@contextlib.contextmanager
def _surrogate_mode(model: nn.Module, method: str, surrogates: Mapping[str, nn.Module]) -> Iterator[None]:
    """Put the model into the training mode of `method`; empties the layers' errmodel slots afterwards.

    The multiplicative baseline perturbs weights (`_WeightNoiseForward`), so its slots stay empty."""
    from dse.nn import set_mode

    layers = _layers(model)
    set_mode(model, "errmodel")  # quant arithmetic (ranges frozen) plus the layer's errmodel slot
    for name, layer in layers.items():
        layer.errmodel = None if method == "multiplicative" else surrogates.get(name)
    try:
        yield
    finally:
        for layer in layers.values():
            layer.errmodel = None


class _WeightNoiseForward(nn.Module):
    """Runs `model` with the weights of the named layers multiplied by fresh noise (gradient to the weights)."""

    def __init__(self, model: nn.Module, surrogates: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.surrogates = dict(surrogates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        noisy = {f"{n}.weight": s(params[f"{n}.weight"]) for n, s in self.surrogates.items()}
        return torch.func.functional_call(self.model, noisy, (x,), strict=False)


# ---------------------------------------------------------------- training


def _train(
    model: nn.Module,
    prepared: Any,
    method: str,
    multipliers: Mapping[str, Any],
    surrogates: Mapping[str, nn.Module],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    resume_path: Path | None = None,
    refresh: Any = None,
) -> tuple[list[float], list[float]]:
    """`dse.train.fit`, one call per epoch, in the method's mode; no validation (a surrogate accuracy is
    never looked at). The learning rate steps down a cosine by epoch. `refresh()` (when given) returns
    new surrogates measured on the current weights before every epoch after the first; its time counts
    in that epoch. Returns (wall seconds, CPU seconds of this process) of each epoch; the CPU time is the
    fairer speed measure on a shared machine. With `resume_path`, a killed run continues."""
    from dse.train import fit

    key = f"{method}:{epochs}:{lr}:{batch_size}:{seed}:{refresh is not None}"
    times: list[float] = []
    cpu_times: list[float] = []
    start = 0
    if resume_path is not None and Path(resume_path).exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            start, times, cpu_times = state["epoch"], state["times"], state["cpu_times"]
    for epoch in range(start, epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        if refresh is not None and epoch > 0:
            surrogates = refresh()
        extra = time.perf_counter() - t0
        ctx = (
            contextlib.nullcontext() if method == "behavioral" else _surrogate_mode(model, method, surrogates)
        )
        if method == "behavioral":
            _set_lut(model, multipliers)
        net = _WeightNoiseForward(model, surrogates) if method == "multiplicative" else model
        with ctx:
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
        Path(resume_path).unlink(missing_ok=True)
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
    prepared: Any = None,
) -> RetrainResult:
    """Retrain the prepared network of `run_dir` for `assignment` with `method`; save checkpoint + result."""
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
    model = prepared.model
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    chash = config_hash(multipliers, run_dir, calibration_samples)
    out_dir = run_dir / "retrain" / chash
    try:
        accuracy_before = evaluate_lut(prepared, model, multipliers, device)
        stats_seconds = 0.0
        surrogates: dict[str, nn.Module] = {}
        refresh = None
        if method != "behavioral":
            stats, stats_seconds = get_error_stats(
                prepared, model, multipliers, out_dir, calibration_samples, device=device
            )
            surrogates = _on(build_surrogates(method, prepared, multipliers, stats), device)
            if refresh_stats and method != "multiplicative":  # the table's relative error never changes

                def refresh() -> dict[str, nn.Module]:
                    now = measure_error_stats(
                        prepared, model, multipliers, calibration_samples, device=device
                    )
                    return _on(build_surrogates(method, prepared, multipliers, now), device)

        bs = batch_size or int(getattr(getattr(prepared.study, "train", None), "batch_size", 64) or 64)
        resume = out_dir / f"{method}.resume.pt"
        times, cpu_times = _train(
            model, prepared, method, multipliers, surrogates, epochs, lr, bs, seed, device, resume, refresh
        )
        accuracy_after = evaluate_lut(prepared, model, multipliers, device)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    finally:
        model.load_state_dict(initial)  # the prepared model stays as it was for the caller
    ckpt = out_dir / f"{method}.pt"
    result = RetrainResult(
        method=method,
        epochs=epochs,
        lr=lr,
        batch_size=bs,
        assignment={n: m.name for n, m in multipliers.items()},
        quant_accuracy=float(getattr(prepared, "quant_accuracy", float("nan"))),
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        seconds_per_epoch=sum(times) / len(times),
        cpu_seconds_per_epoch=sum(cpu_times) / len(cpu_times),
        stats_seconds=stats_seconds,
        refresh_stats=refresh is not None,
        checkpoint=str(ckpt),
        config_hash=chash,
    )
    atomic_torch_save({"state_dict": state, "result": result.to_json()}, ckpt)
    atomic_write_json(out_dir / f"{method}.json", result.to_json())
    return result


def compare_methods(
    run_dir: Path,
    assignment: Mapping[str, str],
    methods: Sequence[str] = METHODS,
    data: str | None = None,
    device: str = "cpu",
    where: str = "config",
    raw_config: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Every method on one assignment in one process (same start, same seed), side by side; with the
    errmodel / behavioral epoch-time ratio when both ran (measured in this run, so comparable)."""
    prepared = load_run(Path(run_dir), data=data, device=device)
    results = [
        retrain(
            run_dir,
            assignment,
            m,
            device=device,
            where=where,
            raw_config=raw_config,
            prepared=prepared,
            **kwargs,
        )
        for m in methods
    ]
    by = {r.method: r for r in results}
    speedup = cpu_speedup = None
    if "behavioral" in by and "errmodel" in by and by["errmodel"].seconds_per_epoch > 0:
        speedup = by["behavioral"].seconds_per_epoch / by["errmodel"].seconds_per_epoch
        cpu_speedup = by["behavioral"].cpu_seconds_per_epoch / max(by["errmodel"].cpu_seconds_per_epoch, 1e-9)
    return {
        "results": [r.to_json() for r in results],
        "errmodel_speedup_vs_behavioral": speedup,
        "errmodel_cpu_speedup_vs_behavioral": cpu_speedup,
    }


def load_retrained(prepared: Any, checkpoint: Path) -> nn.Module:
    """The prepared model with the retrained weights of `checkpoint` loaded (in place; returned)."""
    blob = torch.load(Path(checkpoint), map_location="cpu", weights_only=False)
    prepared.model.load_state_dict(blob["state_dict"])
    return prepared.model


# ---------------------------------------------------------------- cross-evaluation


def cross_evaluate(
    run_dir: Path,
    multiplier_names: Sequence[str],
    method: str = "errmodel",
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int | None = None,
    calibration_samples: int = CALIBRATION_SAMPLES,
    refresh_stats: bool = True,
    seed: int = 0,
    data: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Retrain with each multiplier's model (homogeneous), evaluate each with every multiplier (lut mode).

    Rows: "none" (the prepared, not retrained network) then each multiplier it was retrained for; columns:
    the exact multiplier of the format then each multiplier; cells: validation accuracy.
    """
    if not multiplier_names:
        raise UserError("--cross: no multipliers to cross-evaluate")
    prepared = load_run(Path(run_dir), data=data, device=device)
    layer_names = [info.name for info in prepared.layers]
    exact = next(
        m
        for m in prepared.library.multipliers(signed=bool(prepared.fmt.signed))
        if getattr(m, "is_exact", False)
    )
    columns = [exact.name] + [n for n in multiplier_names if n != exact.name]
    homog = {
        c: resolve_assignment({layer: c for layer in layer_names}, prepared, where="--cross") for c in columns
    }
    model = prepared.model
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows, matrix = ["none"], []
    matrix.append([evaluate_lut(prepared, model, homog[c], device) for c in columns])
    for name in columns[1:]:
        res = retrain(
            run_dir,
            {layer: name for layer in layer_names},
            method,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            calibration_samples=calibration_samples,
            refresh_stats=refresh_stats,
            seed=seed,
            device=device,
            where="--cross",
            prepared=prepared,
        )
        load_retrained(prepared, Path(res.checkpoint))
        matrix.append([evaluate_lut(prepared, model, homog[c], device) for c in columns])
        model.load_state_dict(initial)
        rows.append(name)
    return {"method": method, "epochs": epochs, "rows": rows, "columns": columns, "accuracy": matrix}
