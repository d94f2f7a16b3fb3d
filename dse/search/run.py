"""`dse search` and `dse worker`: run every missing stage, then the search, baselines and summary.

Stages: prepare, σ predictions and AGN tolerances (dse.errors), the surrogate (pymoo) and the accurate
stage (optuna NSGA-II, every trial simulated), the baselines, the test-split re-measurement, and
summary.json. The report is not written here: `dse search` (dse.cli.search) writes it afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dse.search.accurate import completed_points, run_trials, simulated_count, spent
from dse.search.pareto import hypervolume
from dse.search.problem import SearchProblem
from dse.search.records import Fallback, Summary
from dse.search.seeding import first_generation, surrogate_callbacks
from dse.search.setup import build_setup, problem_of
from dse.search.simulate import val_images
from dse.search.storage import (
    ATTR_BUDGET,
    ATTR_CONFIG,
    ATTR_FINGERPRINT,
    ATTR_SEEDED,
    create_or_load_study,
    default_storage_url,
    load_existing_study,
    make_sampler,
    open_storage,
    redact,
    requeued_count,
)
from dse.search.summary import build_summary
from dse.util import UserError, atomic_write_json, log, progress, set_threads, sha256_file

if TYPE_CHECKING:
    import optuna
    from tqdm import tqdm

    from dse.prepare import Prepared


@dataclass(frozen=True)
class SearchResult:
    """A finished search: its summary (also in `run_dir`/summary.json) and the run directory."""

    summary: Summary
    run_dir: Path


@dataclass(frozen=True)
class WorkerResult:
    """What one `dse worker` process did."""

    study: str
    simulated: int
    cached: int
    failed: int
    seconds: float
    lost: int = 0  # trials another worker finished first (this one was taken for dead while slow)
    requeued_trials: int = 0  # trials of the study asked again because their worker died
    fallbacks: tuple[Fallback, ...] = ()  # stages that failed here; the worker went on without them

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _config_and_fingerprint(
    prepared: Prepared, problem: SearchProblem, population: int, seed: int
) -> tuple[dict[str, Any], str]:
    study = prepared.study.model_dump()
    study["search"].pop("budget", None)  # a larger budget continues the same search
    ckpt = Path(prepared.run_dir.qat_ckpt)
    ckpt_sha = sha256_file(ckpt) if ckpt.is_file() else ""
    doc = {"study": study, "problem": problem.fingerprint(), "checkpoint": ckpt_sha}
    fp = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    config = {
        "study": prepared.study.model_dump(),
        "run_dir": str(Path(prepared.run_dir.path).resolve()),
        "population": population,
        "seed": seed,
    }
    return config, fp


def _hv_progress(bar: tqdm[Any], n_val: int | None) -> Callable[[list[optuna.trial.FrozenTrial]], None]:
    """The bar counts the budget spent (a candidate rejected early costs its share of the split, as the
    budget counts it) and shows the candidates simulated and the hypervolume so far."""

    def on_batch(trials: list[optuna.trial.FrozenTrial]) -> None:
        done = [t for t in trials if t.state.name == "COMPLETE"]
        hv = hypervolume([t.values[0] for t in done], [t.values[1] for t in done])
        used = round(spent(trials, n_val), 1)
        bar.update(max(0.0, min(used, bar.total or used) - bar.n))  # the last batch may pass the budget
        bar.set_postfix(candidates=simulated_count(trials), hypervolume=f"{hv:.4f}")

    return on_batch


def seed_count(problem: SearchProblem, n_lambdas: int) -> tuple[int, str]:
    """How many seeds a search starts from (at most; an AGN mapping equal to another seed is one) and
    what they are, in words."""
    all_exact = problem.all_exact()
    exact = 1 if all_exact is not None else 0
    homo = sum(1 for g in problem.homogeneous() if g != all_exact)  # exact everywhere is counted once
    words = f"{'all-exact, ' if exact else ''}{n_lambdas} AGN mappings, {homo} homogeneous assignments"
    return exact + n_lambdas + homo, words


def check_search_inputs(problem: SearchProblem, budget: int, n_lambdas: int) -> None:
    """The search's bad inputs, before anything of the search is written: a space in which every layer
    may only be exact (nothing to search), a budget smaller than the seeds."""
    if problem.exact is not None and all(set(ch) == {problem.exact} for ch in problem.choices):
        raise UserError(
            f"search space: every layer is restricted to the exact multiplier {problem.exact!r}: "
            "nothing to search (allow an approximate multiplier in at least one layer)"
        )
    n, words = seed_count(problem, n_lambdas)
    if budget < n:
        raise UserError(
            f"search.budget = {budget}: smaller than the {n} seeds ({words}); give a budget of at least {n}"
        )


def check_before_prepare(target: str | Path | None, budget: int | None) -> None:
    """What can be validated without training, before the prepare stage (35-58 s on the built-in studies,
    hours on a real network): the study file, search.budget, the search space and every multiplier
    pattern in it, the layer names of its per-layer restrictions, a space in which every layer may only be
    exact, and a budget smaller than the seeds (the layers from the model built, not trained)."""
    from dse.models import build_model
    from dse.nn import convert
    from dse.nn.model import approx_layers
    from dse.prepare.stage import run_dir_target
    from dse.study import load_study

    run = run_dir_target(target)
    study = run.read_study() if run is not None else load_study(target)
    b = int(budget if budget is not None else study.search.budget)
    if b <= 0:
        raise UserError(f"search.budget = {b}: expected a positive number of simulations")
    space = study.load_search_space()
    library = space.load_library()
    resolved = space.resolve(library)
    model = build_model(study.model.name, base_dir=study.base_dir)
    names = list(approx_layers(convert(model, space.quant_format(study.train.per_channel))))
    layer_space = space.resolve_layers(library, names)
    # MACs do not matter here: the seeds and the exact-only check depend on the multipliers only
    problem, _ = problem_of(
        names, [1] * len(names), layer_space, resolved, library, space.signed, study.search
    )
    check_search_inputs(problem, b, len(study.agn.lambdas))


def run_search(
    target: str | Path | None = None,
    out: str | Path | None = None,
    storage: str | None = None,
    budget: int | None = None,
    device: str = "auto",
    data: str | Path | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    threads: int | None = None,
) -> SearchResult:
    """The whole pipeline up to summary.json (written to the run directory and returned)."""
    from dse.prepare import open_run

    set_threads(threads)
    if budget is not None and budget <= 0:
        raise UserError(f"--budget {budget}: expected a positive number of simulations")
    t_start = time.perf_counter()
    check_before_prepare(target, budget)  # the study, its search space and budget: before any training
    url = storage  # open the storage first: a bad URL fails before minutes of preparation
    storage_obj = open_storage(url) if url else None
    prepared = open_run(target, out=out, data=data, device=device)
    t_prepared = time.perf_counter()
    cfg = prepared.study.search
    budget = int(budget if budget is not None else cfg.budget)
    if budget <= 0:
        raise UserError(f"search.budget = {budget}: expected a positive number of simulations")
    seed = int(cfg.seed if seed is None else seed)
    log(f"search {prepared.study.name}: layer profiles, σ predictions and AGN tolerances (cached in the run)")
    setup = build_setup(prepared)
    problem = setup.problem
    stage_seconds = {"prepare": t_prepared - t_start, **setup.stage_seconds}
    if url is None or storage_obj is None:
        url = default_storage_url(Path(prepared.run_dir.path))
        storage_obj = open_storage(url)
    name = study_name or prepared.study.name
    config, fp = _config_and_fingerprint(prepared, problem, cfg.population, seed)
    study = create_or_load_study(storage_obj, name, fp, config, make_sampler(cfg.population, seed), url)
    study.set_user_attr(ATTR_BUDGET, budget)
    done = simulated_count(study.get_trials(deepcopy=False))
    if done:
        log(f"search {name}: resuming: {min(done, budget)} of {budget} trials done")

    t_search = time.perf_counter()
    log(f"search {name}: the seeds (all-exact, AGN mappings, homogeneous), then the surrogate's batches")
    seeds = first_generation(setup, cfg.population, seed)
    if not study.user_attrs.get(ATTR_SEEDED):
        for g, origin in seeds:
            study.enqueue_trial(
                problem.assignment(g), user_attrs={"origin": origin.to_json()}, skip_if_exists=True
            )
        study.set_user_attr(ATTR_SEEDED, True)
    suggest, predict = surrogate_callbacks(setup, seeds, seed, cfg.explore_share)
    with progress(total=budget, desc=f"search {name}") as bar:
        run_trials(
            study,
            problem,
            setup.cache,
            budget,
            cfg.population,
            seed=seed,
            predict=predict,
            suggest=suggest,
            on_batch=_hv_progress(bar, val_images(setup.cache)),
            confidence=cfg.early_rejection_confidence,
        )
    points = completed_points(problem, study)
    stage_seconds["search"] = time.perf_counter() - t_search
    random_txt = f", random search of {budget}" if cfg.random_baseline else ""
    log(
        f"search {name}: baselines (homogeneous, AGN{random_txt}) and the front re-measured on the test split"
    )
    summary = build_summary(setup, points, budget, seed, random_baseline=cfg.random_baseline)
    search_wall = time.perf_counter() - t_search
    sim_s = setup.cache.seconds
    n_sims = sum(setup.cache.simulations.values())
    summary = dataclasses.replace(
        summary,
        study=prepared.study.name,
        seconds=time.perf_counter() - t_start,
        simulations_per_second=n_sims / sim_s if sim_s > 0 else None,
        outside_simulation_share=max(0.0, 1.0 - sim_s / search_wall) if search_wall > 0 else None,
        stage_seconds=stage_seconds,
        storage=redact(url),
        optuna_study=name,
        fallbacks=tuple(setup.fallbacks),
        requeued_trials=requeued_count(study.get_trials(deepcopy=False)),
    )
    for fb in setup.fallbacks:
        log(f"search: ran without {fb.stage} ({fb.error}): {fb.effect}")
    run_dir = Path(prepared.run_dir.path)
    atomic_write_json(prepared.run_dir.summary_json, summary.to_json())
    return SearchResult(summary, run_dir)


def run_worker(
    storage: str,
    study_name: str,
    target: str | Path | None = None,
    out: str | Path | None = None,
    data: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> WorkerResult:
    """Join a study that `dse search` started. What the worker runs — the study (its model hook, data,
    search space) and the run directory — comes from its own command line only: `target` (a study file,
    built-in study name or run directory, as for `dse search`) and/or `out`; never from the storage, which
    anyone with write access to it could change. The storage gives trials, the budget and the search seed
    (numbers); the worker joins only when the storage's study identity (the fingerprint of study, problem
    and QAT checkpoint) equals the one it computes itself."""
    from dse.prepare import open_run
    from dse.rundir import RunDir

    set_threads(threads)
    if target is None:
        if out is None:
            raise UserError(
                "dse worker: give the study (study file, built-in study name or run directory) and/or "
                "--out RUN_DIR; a worker takes no study, code or paths from the storage"
            )
        if not RunDir(out).is_run_dir():
            raise UserError(f"--out {out}: not a run directory (no study.toml); give the study file as well")
    storage_obj = open_storage(storage)
    probe = load_existing_study(storage_obj, study_name, None, storage)
    config = probe.user_attrs[ATTR_CONFIG]
    try:
        budget = int(probe.user_attrs.get(ATTR_BUDGET, config["study"]["search"]["budget"]))
        seed = int(config.get("seed", 0))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"--study {study_name}: the storage's budget or seed is not a number") from None
    if target is None:  # the run directory names the study (its study.toml)
        prepared = open_run(out, data=data, device=device)
    else:
        prepared = open_run(target, out=out, data=data, device=device)
    study_cfg = prepared.study
    run_dir = Path(prepared.run_dir.path)
    setup = build_setup(prepared, with_error_models=False)  # the surrogate proposes the worker's batches
    population = study_cfg.search.population
    _, fp = _config_and_fingerprint(prepared, setup.problem, population, seed)
    stored = probe.user_attrs.get(ATTR_FINGERPRINT)
    if stored != fp:
        raise UserError(
            f"--study {study_name}: the study in the storage is not the one given here (identity "
            f"{str(stored)[:12]} there, {fp[:12]} here: study, data, search space or QAT checkpoint differ); "
            "give the worker the run directory or study file and data of the search"
        )
    worker_seed = seed + 1 + (hash(run_dir.resolve()) ^ int(time.time() * 1e6)) % 100_000
    study = create_or_load_study(
        storage_obj, study_name, fp, config, make_sampler(population, worker_seed), storage
    )
    suggest, predict = surrogate_callbacks(setup, [], worker_seed, study_cfg.search.explore_share)
    t0 = time.perf_counter()
    with progress(total=budget, desc=f"worker {study_name}") as bar:
        stats = run_trials(
            study,
            setup.problem,
            setup.cache,
            budget,
            population,
            seed=worker_seed,
            predict=predict,
            suggest=suggest,
            on_batch=_hv_progress(bar, val_images(setup.cache)),
            confidence=study_cfg.search.early_rejection_confidence,
        )
    return WorkerResult(
        study=study_name,
        simulated=stats.simulated,
        cached=stats.cached,
        failed=stats.failed,
        seconds=time.perf_counter() - t0,
        lost=stats.lost,
        requeued_trials=requeued_count(study.get_trials(deepcopy=False)),
        fallbacks=tuple(setup.fallbacks),
    )
