"""summary.json (docs/ARCHITECTURE.md "summary.json"): the front, every simulated point, the baselines
(homogeneous front, AGN-greedy points, random search with the same number of simulations), hypervolumes,
and every front / baseline point re-measured on the disjoint test split. Also the partial summary of a
search still running, read from its optuna storage."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dse.prepare.records import PreparedLayer
from dse.search.baselines import agn_points, homogeneous_points, random_points
from dse.search.pareto import hypervolume
from dse.search.records import (
    Baseline,
    HypervolumeMark,
    Origin,
    SearchPoint,
    SimulationFailure,
    Summary,
    Targets,
    front_of,
)
from dse.search.setup import Setup
from dse.util import UserError, read_json


def hypervolume_history(points: Sequence[SearchPoint], step: int) -> list[HypervolumeMark]:
    """Hypervolume of the search's points after every `step` simulations (trial order), and at the end."""
    pts = sorted(points, key=lambda p: p.trial if p.trial is not None else -1)
    marks = list(range(step, len(pts), step)) + [len(pts)]
    return [HypervolumeMark(n, _hv(pts[:n])) for n in marks]


def _hv(points: Sequence[SearchPoint]) -> float:
    return hypervolume([p.energy_rel for p in points], [_accuracy(p) for p in points])


def _accuracy(p: SearchPoint) -> float:
    if p.accuracy is None:
        raise ValueError(f"point of trial {p.trial} has no accuracy")
    return p.accuracy


def _value(v: float | SimulationFailure | None) -> float | None:
    return None if v is None or isinstance(v, SimulationFailure) else v


def build_summary(
    setup: Setup, points: Sequence[SearchPoint], budget: int, seed: int, random_baseline: bool = True
) -> Summary:
    """The summary of a finished accurate stage: `points` are its simulated candidates (trial order).
    Runs the baselines and the test-split re-measurements through the setup's cache."""
    problem, cache, prepared = setup.problem, setup.cache, setup.prepared
    pts = list(points)
    front_idx = front_of(pts)
    baselines = {
        "homogeneous": homogeneous_points(problem, cache),
        "agn": agn_points(problem, cache, setup.agn),
    }
    if random_baseline:
        baselines["random"] = random_points(problem, cache, len(pts), seed)
    # re-measure every front and baseline point on the test split
    to_test = [pts[i].genome for i in front_idx]
    for b in baselines.values():
        to_test += [p.genome for p in b]
    q_val = cache.evaluate([setup.quant_genome], "val")[0]
    q_test = cache.evaluate([setup.quant_genome], "test")[0]
    test_acc = dict(zip(to_test, cache.evaluate(to_test, "test")))
    for i in front_idx:  # a front point is one of the points: both lists carry its test accuracy
        pts[i] = dataclasses.replace(pts[i], test_accuracy=_value(test_acc.get(pts[i].genome)))
    front = [pts[i] for i in front_idx]
    baselines = {
        k: [dataclasses.replace(p, test_accuracy=_value(test_acc.get(p.genome))) for p in b]
        for k, b in baselines.items()
    }
    quant_accuracy = float(prepared.quant_accuracy)
    tau = None
    if setup.surrogate is not None and len(pts) >= 3:
        genomes = [p.genome for p in pts]
        accs = [_accuracy(p) for p in pts]
        setup.surrogate.fit(genomes, accs)
        tau = setup.surrogate.kendall_tau(genomes, accs)
    layers = tuple(PreparedLayer.of(info) for info in prepared.layers)
    return Summary(
        study="",
        quant_accuracy=quant_accuracy,
        quant_test_accuracy=_value(q_test),
        quant_accuracy_simulated=_value(q_val),
        evaluations=len(pts),
        budget=budget,
        seconds=0.0,
        surrogate_kendall_tau=tau,
        hypervolume=_hv(pts),
        hypervolume_history=tuple(hypervolume_history(pts, max(1, int(prepared.study.search.population)))),
        layers=layers,
        front=tuple(front),
        points=tuple(pts),
        baselines={k: Baseline(_hv(v), tuple(v)) for k, v in baselines.items()},
        targets=targets(front, baselines, quant_accuracy, _value(q_test)),
    )


def best_saving_within(points: Sequence[SearchPoint], quant_accuracy: float, max_loss: float = 0.01) -> float:
    """Best energy saving (1 − energy_rel) among points within `max_loss` of the quantized accuracy."""
    ok = [1.0 - p.energy_rel for p in points if _accuracy(p) >= quant_accuracy - max_loss]
    return max(ok) if ok else 0.0


def targets(
    front: Sequence[SearchPoint],
    baselines: Mapping[str, Sequence[SearchPoint]],
    q: float,
    q_test: float | None,
) -> Targets:
    """The issue's target figures, computed on the run: saving ratios and the validation→test gap."""
    best = best_saving_within(front, q)
    homo = best_saving_within(baselines["homogeneous"], q)
    agn = best_saving_within(baselines["agn"], q) if baselines.get("agn") else None
    gaps = [
        (q_test - p.test_accuracy) - (q - _accuracy(p))
        for p in front
        if p.test_accuracy is not None and q_test is not None
    ]
    return Targets(
        best_saving_within_1pp=best,
        best_homogeneous_saving_within_1pp=homo,
        best_agn_saving_within_1pp=agn,
        saving_ratio_vs_homogeneous=best / homo if homo > 0 else None,
        median_test_minus_val_loss=float(np.median(gaps)) if gaps else None,
    )


def summary_from_storage(run_dir: Path, study_name: str | None) -> Summary | None:
    """A partial summary of a search still running (no summary.json yet): the completed trials of the
    run's optuna storage (`search/optuna.db`), their front and hypervolume. None when there is none.
    `study_name`: the optuna study to read (else the only one there)."""
    from dse.rundir import RunDir

    run = RunDir(run_dir)
    db, prep_path = run.optuna_db, run.result_json
    if not db.is_file() or not prep_path.is_file():
        return None
    prep = read_json(prep_path, "prepare result")
    layers = tuple(PreparedLayer.from_json(layer) for layer in prep.get("layers") or [])
    names = [layer.name for layer in layers]
    import optuna
    import sqlalchemy.exc
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        studies = optuna.get_all_study_names(storage)
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as e:
        # a locked or foreign file (RuntimeError: another optuna's schema): say so rather than crash
        raise UserError(f"{db}: cannot read the search's optuna storage ({type(e).__name__})") from None
    name = study_name if study_name in studies else (studies[0] if len(studies) == 1 else None)
    if name is None or not names:
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    points: list[SearchPoint] = []
    seen: set[tuple[str, ...]] = set()
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        if not t.values or len(t.values) < 2 or any(n not in t.params for n in names):
            continue
        assignment = {n: str(t.params[n]) for n in names}
        key = tuple(assignment.values())
        if key in seen:
            continue
        seen.add(key)
        points.append(
            SearchPoint(
                trial=t.number,
                energy_rel=float(t.values[0]),
                accuracy=float(t.values[1]),
                test_accuracy=None,
                assignment=assignment,
                predicted_accuracy=t.user_attrs.get("predicted_accuracy"),
                origin=Origin.from_json(t.user_attrs.get("origin", "nsga2")),
            )
        )
    energy = [p.energy_rel for p in points]
    acc = [_accuracy(p) for p in points]
    step = max(1, len(points) // 20)
    marks = list(range(step, len(points), step)) + ([len(points)] if points else [])
    return Summary(
        study=name,
        in_progress=True,
        quant_accuracy=prep.get("quant_accuracy"),
        quant_test_accuracy=prep.get("quant_test_accuracy"),
        evaluations=len(points),
        hypervolume=hypervolume(energy, acc) if points else None,
        hypervolume_history=tuple(HypervolumeMark(n, hypervolume(energy[:n], acc[:n])) for n in marks),
        layers=layers,
        front=tuple(points[i] for i in front_of(points)),
        points=tuple(points),
        baselines={},
    )
