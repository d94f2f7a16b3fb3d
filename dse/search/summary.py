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
from dse.search.baselines import (
    agn_points,
    baseline_images,
    front_genomes,
    homogeneous_points,
    random_points,
    simulated_points,
    test_accuracies,
)
from dse.search.pareto import hypervolume
from dse.search.problem import SearchProblem
from dse.search.records import (
    Baseline,
    Genome,
    HypervolumeMark,
    Origin,
    SearchPoint,
    SimulationFailure,
    Summary,
    Targets,
    front_of,
)
from dse.search.setup import Setup
from dse.search.simulate import SimulationCache
from dse.util import UserError, read_json


def hypervolume_history(
    points: Sequence[SearchPoint], step: int, n_val: int | None = None
) -> list[HypervolumeMark]:
    """Hypervolume of the search's points after every `step` candidates (trial order), and at the end;
    with `n_val`, each mark also holds the budget spent so far in full-split simulations."""
    pts = sorted(points, key=lambda p: p.trial if p.trial is not None else -1)
    marks = list(range(step, len(pts), step)) + [len(pts)]
    cost = np.cumsum([1.0 if p.images is None or not n_val else p.images / n_val for p in pts])
    return [HypervolumeMark(n, _hv(pts[:n]), float(cost[n - 1]) if n_val and n else None) for n in marks]


def budget_share_to(history: Sequence[HypervolumeMark], budget: int, share: float = 0.95) -> float | None:
    """Share of the budget spent when the search's hypervolume first reached `share` of its final value."""
    if not history or not history[-1].hypervolume or budget <= 0:
        return None
    final = history[-1].hypervolume
    for h in history:
        if h.hypervolume >= share * final:
            spent = h.simulations if h.simulations is not None else float(h.evaluations)
            return spent / budget
    return None


def _hv(points: Sequence[SearchPoint]) -> float:
    """Hypervolume of the complete points (a partial one is dominated by construction; left out)."""
    full = [p for p in points if not p.partial]
    return hypervolume([p.energy_rel for p in full], [_accuracy(p) for p in full])


def _accuracy(p: SearchPoint) -> float:
    if p.accuracy is None:
        raise ValueError(f"point of trial {p.trial} has no accuracy")
    return p.accuracy


def _value(v: float | SimulationFailure | None) -> float | None:
    return None if v is None or isinstance(v, SimulationFailure) else v


def build_summary(
    setup: Setup, points: Sequence[SearchPoint], budget: int, seed: int, random_baseline: bool = True
) -> Summary:
    """The summary of a finished search: `points` are its simulated candidates (trial order, partial
    ones included). Runs the baselines and the test-split re-measurements through the setup's cache.

    - `surrogate_kendall_tau`: out of sample, the predictions stored before each candidate was simulated
      against its simulated accuracy (candidates rejected early at their slice's accuracy);
      `surrogate_kendall_tau_in_sample`: the model refitted on every point and scored on them.
    - `hypervolume_by_origin`: the hypervolume of each origin's complete points alone.
    - baselines: homogeneous, AGN, random search with the same budget (`budget` full-split simulations:
      the search's image budget, with the search's early rejection against its own front), and
      `random_with_seeds`: that random search plus the same seeds, every seed complete (more images
      than the search had); each baseline's `simulated_images` says what its points cost.
    - test split: the search's front and each baseline's validation front are re-measured (the points a
      user would pick from); other points keep test_accuracy None."""
    problem, cache, prepared = setup.problem, setup.cache, setup.prepared
    pts = list(points)
    front_idx = front_of(pts)
    baselines = {
        "homogeneous": homogeneous_points(problem, cache),
        "agn": agn_points(problem, cache, setup.agn),
    }
    if random_baseline:
        # `budget` full-split simulations (the search's image budget; its candidates may be more, some
        # rejected early), and the same plus the seeds, complete (the stronger reference: more images)
        confidence = float(prepared.study.search.early_rejection_confidence)
        rand = random_points(problem, cache, budget, seed, confidence)
        baselines["random"] = rand
        seeds = seed_points(problem, cache, setup.agn)
        have = {p.genome for p in seeds}
        baselines["random_with_seeds"] = seeds + [p for p in rand if p.genome not in have]
    # re-measure the search's front and every baseline's validation front on the test split
    to_test = [pts[i].genome for i in front_idx]
    for b in baselines.values():
        to_test += front_genomes(b)
    q_val = cache.evaluate([setup.quant_genome], "val")[0]
    q_test = cache.evaluate([setup.quant_genome], "test")[0]
    test_acc = test_accuracies(cache, to_test)
    for i in front_idx:  # a front point is one of the points: both lists carry its test accuracy
        pts[i] = dataclasses.replace(pts[i], test_accuracy=_value(test_acc.get(pts[i].genome)))
    front = [pts[i] for i in front_idx]
    baselines = {
        k: [dataclasses.replace(p, test_accuracy=_value(test_acc.get(p.genome))) for p in b]
        for k, b in baselines.items()
    }
    quant_accuracy = float(prepared.quant_accuracy)
    quant_test = _value(q_test)
    tau, tau_in = prospective_tau(pts), None
    if setup.surrogate is not None and len(pts) >= 3:
        genomes = [p.genome for p in pts]
        accs = [_accuracy(p) for p in pts]
        setup.surrogate.fit(genomes, accs)
        tau_in = setup.surrogate.kendall_tau(genomes, accs)
    layers = tuple(PreparedLayer.of(info) for info in prepared.layers)
    n_val = len(prepared.splits.val) if prepared.splits.val is not None else None
    history = tuple(hypervolume_history(pts, max(1, int(prepared.study.search.population)), n_val))
    images = [p.images for p in pts if p.images is not None]
    simulated_images = int(sum(images)) if images else None
    return Summary(
        study="",
        quant_accuracy=quant_accuracy,
        quant_test_accuracy=quant_test,
        quant_accuracy_simulated=_value(q_val),
        evaluations=len(pts),
        budget=budget,
        seconds=0.0,
        surrogate_kendall_tau=tau,
        surrogate_kendall_tau_in_sample=tau_in,
        hypervolume=_hv(pts),
        hypervolume_by_origin=hypervolume_by_origin(pts),
        hypervolume_history=history,
        budget_share_to_95pct_hypervolume=budget_share_to(history, budget),
        simulated_images=simulated_images,
        simulated_images_per_front_point=(
            simulated_images / len(front) if simulated_images is not None and front else None
        ),
        rejected_early=sum(1 for p in pts if p.partial),
        layers=layers,
        front=tuple(front),
        points=tuple(pts),
        baselines={
            k: Baseline(
                _hv(v),
                tuple(v),
                best_saving_within(v, quant_accuracy) if v else None,
                best_saving_within_test(v, quant_test) if v and quant_test is not None else None,
                baseline_images(v),
            )
            for k, v in baselines.items()
        },
        targets=targets(front, baselines, quant_accuracy, quant_test),
    )


def seed_points(
    problem: SearchProblem, cache: SimulationCache, agn: Sequence[tuple[Genome, Origin]]
) -> list[SearchPoint]:
    """The search's seeds (all-exact, AGN mappings, homogeneous), complete on validation."""
    out: list[SearchPoint] = []
    exact = problem.all_exact()
    if exact is not None:
        out += simulated_points(problem, cache, [exact], [Origin("exact")])
    out += agn_points(problem, cache, agn)
    out += homogeneous_points(problem, cache)
    seen: set[Genome] = set()
    unique = []
    for p in out:
        if p.genome not in seen:
            seen.add(p.genome)
            unique.append(p)
    return unique


def prospective_tau(points: Sequence[SearchPoint]) -> float | None:
    """Kendall τ between the prediction stored before each candidate was simulated and its simulated
    accuracy (out of sample: the model had not seen the candidate). None with fewer than 3 predictions."""
    from scipy.stats import kendalltau

    pairs = [(p.predicted_accuracy, p.accuracy) for p in points if p.predicted_accuracy is not None]
    if len(pairs) < 3:
        return None
    tau = kendalltau([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return float(tau) if np.isfinite(tau) else None


def hypervolume_by_origin(points: Sequence[SearchPoint]) -> dict[str, float]:
    """{origin kind: hypervolume of that origin's complete points alone} (AGN mappings of every λ as
    one origin "agn")."""
    groups: dict[str, list[SearchPoint]] = {}
    for p in points:
        if not p.partial:
            groups.setdefault(p.origin.kind, []).append(p)
    return {k: _hv(v) for k, v in sorted(groups.items())}


def best_saving_within(points: Sequence[SearchPoint], quant_accuracy: float, max_loss: float = 0.01) -> float:
    """Best energy saving (1 − energy_rel) among points within `max_loss` of the quantized accuracy."""
    ok = [1.0 - p.energy_rel for p in points if not p.partial and _accuracy(p) >= quant_accuracy - max_loss]
    return max(ok) if ok else 0.0


def best_saving_within_test(
    points: Sequence[SearchPoint], quant_test_accuracy: float, max_loss: float = 0.01
) -> float:
    """Best energy saving among points whose *test* accuracy is within `max_loss` of the quantized test
    accuracy (points without a test accuracy do not count)."""
    ok = [
        1.0 - p.energy_rel
        for p in points
        if p.test_accuracy is not None and p.test_accuracy >= quant_test_accuracy - max_loss - 1e-12
    ]
    return max(ok) if ok else 0.0


def targets(
    front: Sequence[SearchPoint],
    baselines: Mapping[str, Sequence[SearchPoint]],
    q: float,
    q_test: float | None,
) -> Targets:
    """The issue's target figures, computed on the run: saving ratios (judged on validation and on test)
    and the validation→test gap."""
    best = best_saving_within(front, q)
    homo = best_saving_within(baselines["homogeneous"], q)
    agn = best_saving_within(baselines["agn"], q) if baselines.get("agn") else None
    gaps = [
        (q_test - p.test_accuracy) - (q - _accuracy(p))
        for p in front
        if p.test_accuracy is not None and q_test is not None
    ]
    best_t = homo_t = None
    if q_test is not None:
        best_t = best_saving_within_test(front, q_test)
        homo_t = best_saving_within_test(baselines["homogeneous"], q_test)
    return Targets(
        best_saving_within_1pp=best,
        best_homogeneous_saving_within_1pp=homo,
        best_agn_saving_within_1pp=agn,
        saving_ratio_vs_homogeneous=best / homo if homo > 0 else None,
        median_test_minus_val_loss=float(np.median(gaps)) if gaps else None,
        best_saving_within_1pp_test=best_t,
        best_homogeneous_saving_within_1pp_test=homo_t,
        saving_ratio_vs_homogeneous_test=best_t / homo_t if best_t is not None and homo_t else None,
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
                images=t.user_attrs.get("images"),
                partial=bool(t.user_attrs.get("partial", False)),
            )
        )
    step = max(1, len(points) // 20)
    marks = list(range(step, len(points), step)) + ([len(points)] if points else [])
    return Summary(
        study=name,
        in_progress=True,
        quant_accuracy=prep.get("quant_accuracy"),
        quant_test_accuracy=prep.get("quant_test_accuracy"),
        evaluations=len(points),
        hypervolume=_hv(points) if points else None,  # partial points (never on the front) left out
        hypervolume_history=tuple(HypervolumeMark(n, _hv(points[:n])) for n in marks),
        layers=layers,
        front=tuple(points[i] for i in front_of(points)),
        points=tuple(points),
        baselines={},
    )
