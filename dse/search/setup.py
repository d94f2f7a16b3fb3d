"""What a search or a worker starts from: the search problem of a prepared run, the simulator behind the
genome cache, and the seeds that the error models give (AGN mappings, the surrogate)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dse.multipliers.core import Multiplier
from dse.nn.compensation import BIAS, in_choices, split_variant, with_remedies
from dse.prepare.records import PreparedLayer
from dse.search.problem import SearchProblem
from dse.search.records import Fallback, Genome, Origin
from dse.search.simulate import SimulationCache
from dse.search.surrogate import Surrogate
from dse.simulation import ensure_calibration
from dse.util import log

if TYPE_CHECKING:
    from dse.multipliers.library import Library
    from dse.prepare import Prepared
    from dse.study import SearchConfig


@dataclass
class Setup:
    """What a search or a worker needs: the problem, the simulator behind a cache, and the seeds."""

    prepared: Prepared
    problem: SearchProblem
    cache: SimulationCache
    quant_genome: Genome
    surrogate: Surrogate | None = None
    agn: list[tuple[Genome, Origin]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    fallbacks: list[Fallback] = field(default_factory=list)  # stages that failed; the search went on


def build_problem(prepared: Prepared) -> tuple[SearchProblem, dict[str, Multiplier]]:
    """The search problem of a prepared run and the multipliers by name (search space + exact)."""
    macs = [PreparedLayer.of(info).macs for info in prepared.layers]
    return problem_of(
        prepared.layer_names,
        macs,
        prepared.layer_space,
        prepared.space,
        prepared.library,
        prepared.fmt.signed,
        prepared.study.search,
    )


def problem_of(
    names: Sequence[str],
    macs: Sequence[int],
    layer_space: Mapping[str, Sequence[Multiplier]],
    space: Sequence[Multiplier],
    library: Library,
    signed: bool,
    cfg: SearchConfig,
) -> tuple[SearchProblem, dict[str, Multiplier]]:
    """The search problem of layers (forward order, their MACs), the multipliers allowed per layer and the
    space, with the exact multiplier of the format (from the library when the space has none) and the
    remedy variants that the search settings `cfg` ask for."""
    mults = {m.name: m for ms in layer_space.values() for m in ms}
    for m in space:
        mults.setdefault(m.name, m)
    exact = next((m.name for m in mults.values() if m.is_exact), None)
    if exact is None:
        ex = next((m for m in library.multipliers(signed=signed) if m.is_exact), None)
        if ex is not None:
            mults[ex.name] = ex
            exact = ex.name
    choices = [[m.name for m in layer_space.get(n, [])] for n in names]
    if cfg.compensate_bias is not False or cfg.weight_tuning:  # remedy variants: "NAME+bc", "NAME+wt"
        exact_names = {name for name, m in mults.items() if m.is_exact}
        choices = [with_remedies(ch, exact_names, cfg.compensate_bias, cfg.weight_tuning) for ch in choices]
        mults.update({v: mults[split_variant(v)[0]] for ch in choices for v in ch})
    energies = {name: float(m.energy_rel) for name, m in mults.items()}
    return SearchProblem.build(names, macs, choices, energies, exact=exact), mults


def build_setup(
    prepared: Prepared, with_error_models: bool = True, device_batch: int = 2048, with_surrogate: bool = True
) -> Setup:
    """The problem and a cache over the model simulator; with the error models (AGN seeds, surrogate)
    unless `with_error_models` is False (a worker: the surrogate only, which proposes its batches, unless
    `with_surrogate` is False too)."""
    from dse.search.model_sim import ModelSimulator

    problem, mults = build_problem(prepared)
    if any(split_variant(m)[1] for ch in problem.choices for m in ch):
        ensure_calibration(prepared)  # the remedies' calibration histograms, before the simulator runs
    stage_seconds: dict[str, float] = {}
    agn: list[tuple[Genome, Origin]] = []
    surrogate = None
    fallbacks: list[Fallback] = []
    if with_error_models:  # before the simulator wraps the layers' forward
        agn = _agn_seeds(prepared, problem, stage_seconds, fallbacks)
    if with_error_models or with_surrogate:
        surrogate = _surrogate(prepared, problem, mults, stage_seconds, fallbacks)
    return Setup(
        prepared=prepared,
        problem=problem,
        cache=SimulationCache(ModelSimulator(prepared, problem, mults, batch_size=device_batch)),
        quant_genome=tuple(problem.exact or "" for _ in problem.layers),
        surrogate=surrogate,
        agn=agn,
        stage_seconds=stage_seconds,
        fallbacks=fallbacks,
    )


def _agn_seeds(
    prepared: Prepared, problem: SearchProblem, stage_seconds: dict[str, float], fallbacks: list[Fallback]
) -> list[tuple[Genome, Origin]]:
    """The AGN mappings, one per λ (-> the AGN seeds and baseline). A failing AGN stage leaves the search
    running without them: logged and recorded in `fallbacks` (summary.json, the report)."""
    from dse.agn import get_agn_results

    out: list[tuple[Genome, Origin]] = []
    t0 = time.perf_counter()
    try:
        for r in get_agn_results(prepared, prepared.study.agn.lambdas):
            out.append((problem.genome(in_choices(r.assignment, problem)), Origin.agn(r.lam)))
    except (RuntimeError, ValueError, ArithmeticError, OSError, KeyError, IndexError) as e:
        # a training that diverged, ran out of memory, or a stage file it could not write: the search
        # still works without AGN (no AGN seeds, no AGN baseline), and says so
        fb = Fallback.of("agn", e, "no AGN seeds and no AGN baseline")
        fallbacks.append(fb)
        log(f"search: no AGN mappings ({fb.error}); recorded in summary.json fallbacks")
    stage_seconds["agn"] = time.perf_counter() - t0
    return out


def _surrogate(
    prepared: Prepared,
    problem: SearchProblem,
    mults: Mapping[str, Multiplier],
    stage_seconds: dict[str, float],
    fallbacks: list[Fallback],
) -> Surrogate | None:
    """The surrogate over the σ predictions' distortion table: squared relative output error per layer
    and multiplier (normalising by the AGN tolerances instead of the output std ranked worse, see
    dse.search.surrogate). None, logged, when the predictions fail."""
    from dse.errors.predict import get_predictions
    from dse.errors.profiles import get_profiles

    cfg = prepared.study.search
    t0 = time.perf_counter()
    try:  # the profiles on search.calibration_images training images (recomputed when that changed)
        fresh = get_profiles(prepared, images=cfg.calibration_images).images != cfg.calibration_images
        if fresh:
            get_profiles(prepared, images=cfg.calibration_images, recompute=True)
        pred = get_predictions(prepared, recompute=fresh)
    except (RuntimeError, ValueError, ArithmeticError, OSError, KeyError, IndexError) as e:
        fb = Fallback.of("predictions", e, "no surrogate: the study's NSGA-II sampler proposes every batch")
        fallbacks.append(fb)
        log(f"search: no σ predictions ({fb.error}); the surrogate stage is skipped (summary.json fallbacks)")
        return None
    stage_seconds["predictions"] = time.perf_counter() - t0
    row = {n: i for i, n in enumerate(pred.layers)}
    col = {m: j for j, m in enumerate(pred.multipliers)}
    std = np.asarray(pred.output_std, dtype=np.float64)
    dist = np.zeros((len(problem.layers), int(problem.n_choices.max())))
    for li, name in enumerate(problem.layers):
        tol = max(std[row[name]], 1e-12)
        for ci, m in enumerate(problem.choices[li]):
            base, remedy = split_variant(m)
            if base in col:  # a compensated variant: the mean error is removed (weight tuning: as predicted)
                s, mu = pred.sigma[row[name], col[base]], pred.mean[row[name], col[base]]
                mu = 0.0 if remedy == BIAS else mu
                dist[li, ci] = (s * s + mu * mu) / (tol * tol)
    chance = 1.0 / max(2, int(prepared.splits.num_classes))
    return Surrogate(
        problem,
        dist,
        prepared.quant_accuracy,
        chance,
        generations=cfg.surrogate_generations,
        families=design_families(mults.values()),
    )


def design_families(mults: Iterable[Multiplier]) -> dict[str, str]:
    """The surrogate's design family of each multiplier: a built-in design's catalogue family, an imported
    table a family of its own."""
    return {m.name: str(m.params.get("family", m.name)) if m.source == "builtin" else m.name for m in mults}
