"""Retraining methods side by side: every method on one assignment (`compare_methods`), and the
cross-evaluation matrix of homogeneous retrainings (`cross_evaluate`). Both run in one process from one
prepared run, so their times and accuracies are comparable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dse.data import Split
from dse.hwconfig import resolve_assignment
from dse.retrain.loop import RetrainResult, load_retrained, load_run, retrain
from dse.retrain.surrogates import METHODS
from dse.simulation import simulate_accuracy
from dse.util import UserError


@dataclass(frozen=True)
class MethodComparison:
    """The methods' results on one assignment, with the errmodel / behavioral epoch-time ratios (wall and
    CPU time) when both ran, else None."""

    results: list[RetrainResult]
    errmodel_speedup_vs_behavioral: float | None
    errmodel_cpu_speedup_vs_behavioral: float | None

    def to_json(self) -> dict[str, Any]:
        """What `dse retrain --method a,b --json` prints."""
        return {
            "results": [r.to_json() for r in self.results],
            "errmodel_speedup_vs_behavioral": self.errmodel_speedup_vs_behavioral,
            "errmodel_cpu_speedup_vs_behavioral": self.errmodel_cpu_speedup_vs_behavioral,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MethodComparison:
        return cls(
            results=[RetrainResult.from_json(r) for r in d["results"]],
            errmodel_speedup_vs_behavioral=d["errmodel_speedup_vs_behavioral"],
            errmodel_cpu_speedup_vs_behavioral=d["errmodel_cpu_speedup_vs_behavioral"],
        )


@dataclass(frozen=True)
class CrossEvaluation:
    """Validation accuracy (behavioural simulation) of networks retrained for one multiplier everywhere,
    evaluated with every multiplier everywhere. `rows`: "none" (the prepared network, not retrained) then
    the multipliers retrained for; `columns`: the format's exact multiplier then the multipliers;
    `accuracy[row][column]`."""

    method: str
    epochs: int
    rows: list[str]
    columns: list[str]
    accuracy: list[list[float]]

    def to_json(self) -> dict[str, Any]:
        """What `dse retrain --cross --json` prints."""
        return {
            "method": self.method,
            "epochs": self.epochs,
            "rows": self.rows,
            "columns": self.columns,
            "accuracy": self.accuracy,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CrossEvaluation:
        return cls(
            method=d["method"],
            epochs=d["epochs"],
            rows=list(d["rows"]),
            columns=list(d["columns"]),
            accuracy=[list(r) for r in d["accuracy"]],
        )


def compare_methods(
    run_dir: Path,
    assignment: Mapping[str, str],
    methods: Sequence[str] = METHODS,
    data: str | None = None,
    device: str = "cpu",
    where: str = "config",
    raw_config: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> MethodComparison:
    """Every method on one assignment in one process (same start, same seed), side by side; with the
    errmodel / behavioral epoch-time ratio when both ran (measured in this run, so comparable).
    `kwargs`: the other arguments of `retrain`."""
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
    return MethodComparison(results, speedup, cpu_speedup)


def cross_evaluate(
    run_dir: Path,
    multiplier_names: Sequence[str],
    method: str = "errmodel",
    epochs: int = 3,
    data: str | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> CrossEvaluation:
    """Retrain with each multiplier's model (homogeneous), evaluate each with every multiplier (lut mode).
    `kwargs`: the other arguments of `retrain` (lr, batch_size, calibration_samples, refresh_stats, seed)."""
    if not multiplier_names:
        raise UserError("--cross: no multipliers to cross-evaluate")
    prepared = load_run(Path(run_dir), data=data, device=device)
    layer_names = [info.name for info in prepared.layers]
    exact = next(m for m in prepared.library.multipliers(signed=bool(prepared.fmt.signed)) if m.is_exact)
    columns = [exact.name] + [n for n in multiplier_names if n != exact.name]
    homog = {
        c: resolve_assignment({layer: c for layer in layer_names}, prepared, where="--cross") for c in columns
    }
    model = prepared.model
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows, matrix = ["none"], []
    matrix.append([simulate_accuracy(prepared, homog[c], Split.VAL, device=device) for c in columns])
    for name in columns[1:]:
        res = retrain(
            run_dir,
            {layer: name for layer in layer_names},
            method,
            epochs=epochs,
            device=device,
            where="--cross",
            prepared=prepared,
            **kwargs,
        )
        load_retrained(prepared, Path(res.checkpoint))
        matrix.append([simulate_accuracy(prepared, homog[c], Split.VAL, device=device) for c in columns])
        model.load_state_dict(initial)
        rows.append(name)
    return CrossEvaluation(method=method, epochs=epochs, rows=rows, columns=columns, accuracy=matrix)
