"""`dse search` and `dse worker`: run every missing stage, then the search, baselines and summary.

Stages: prepare (dse.rundir), σ predictions and AGN tolerances (dse.errors), the surrogate (pymoo) and
the accurate stage (optuna NSGA-II, every trial simulated), the baselines, the test-split re-measurement,
summary.json, and the report when dse.report provides one.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dse.search.accurate import completed_points, run_trials
from dse.search.problem import Genome, SearchProblem
from dse.search.simulate import SimulationCache
from dse.search.storage import (
    ATTR_BUDGET,
    ATTR_CONFIG,
    ATTR_SEEDED,
    create_or_load_study,
    default_storage_url,
    load_existing_study,
    make_sampler,
    open_storage,
)
from dse.search.summary import build_summary
from dse.search.surrogate import Surrogate
from dse.study import set_threads
from dse.util import UserError, atomic_write_json, log, progress, sha256_file


@dataclass
class Setup:
    """What a search or a worker needs: the problem, the simulator behind a cache, and the seeds."""

    prepared: object
    problem: SearchProblem
    cache: SimulationCache
    quant_genome: Genome
    surrogate: Surrogate | None = None
    agn: list[tuple[Genome, str]] = field(default_factory=list)
    stage_seconds: dict = field(default_factory=dict)


def build_problem(prepared) -> tuple[SearchProblem, dict]:
    """The search problem of a prepared run and the multipliers by name (search space + exact)."""
    layer_space = prepared.layer_space
    names = prepared.layer_names
    macs = [int(info.macs) for info in prepared.layers]
    mults = {m.name: m for ms in layer_space.values() for m in ms}
    for m in prepared.space:
        mults.setdefault(m.name, m)
    exact = next((m.name for m in mults.values() if m.is_exact), None)
    if exact is None:
        ex = next((m for m in prepared.library.multipliers(signed=prepared.fmt.signed) if m.is_exact), None)
        if ex is not None:
            mults[ex.name] = ex
            exact = ex.name
    choices = [[m.name for m in layer_space.get(n, [])] for n in names]
    energies = {name: float(m.energy_rel) for name, m in mults.items()}
    return SearchProblem.build(names, macs, choices, energies, exact=exact), mults


def build_setup(prepared, with_error_models: bool = True, device_batch: int = 2048) -> Setup:
    from dse.search.model_sim import ModelSimulator

    problem, mults = build_problem(prepared)
    setup = Setup(
        prepared=prepared,
        problem=problem,
        cache=SimulationCache(None),
        quant_genome=tuple(problem.exact for _ in problem.layers),
    )
    if with_error_models:  # before the simulator wraps the layers' forward
        _error_models(setup)
    setup.cache.evaluator = ModelSimulator(prepared, problem, mults, batch_size=device_batch)
    return setup


def _error_models(setup: Setup) -> None:
    """AGN mappings (-> the AGN seeds and baseline) and σ predictions (-> the surrogate's distortion
    table: squared relative output error per layer and multiplier; normalising by the AGN tolerances
    instead of the output std ranked worse, see dse.search.surrogate). Either stage failing leaves the
    search running without it (logged)."""
    prepared, problem = setup.prepared, setup.problem
    t0 = time.perf_counter()
    try:
        from dse.errors.agn import get_agn_results

        results = get_agn_results(prepared, prepared.study.agn.lambdas)
        for r in results:
            setup.agn.append((problem.genome(r.assignment), f"agn:{r.lam:g}"))
    except Exception as e:  # the search still works without AGN
        log(f"search: no AGN mappings ({type(e).__name__}: {e})")
    setup.stage_seconds["agn"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        from dse.errors.predict import get_predictions

        pred = get_predictions(prepared)
    except Exception as e:
        log(f"search: no σ predictions ({type(e).__name__}: {e}); the surrogate stage is skipped")
        return
    setup.stage_seconds["predictions"] = time.perf_counter() - t0
    row = {n: i for i, n in enumerate(pred.layers)}
    col = {m: j for j, m in enumerate(pred.multipliers)}
    std = np.asarray(pred.output_std, dtype=np.float64)
    dist = np.zeros((len(problem.layers), int(problem.n_choices.max())))
    for li, name in enumerate(problem.layers):
        tol = max(std[row[name]], 1e-12)
        for ci, m in enumerate(problem.choices[li]):
            if m in col:
                s, mu = pred.sigma[row[name], col[m]], pred.mean[row[name], col[m]]
                dist[li, ci] = (s * s + mu * mu) / (tol * tol)
    chance = 1.0 / max(2, int(getattr(prepared.splits, "num_classes", 10)))
    setup.surrogate = Surrogate(problem, dist, prepared.quant_accuracy, chance)


def _config_and_fingerprint(prepared, problem: SearchProblem, population: int, seed: int) -> tuple[dict, str]:
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


def _hv_progress(problem, bar):
    from dse.search.accurate import simulated_count
    from dse.search.pareto import hypervolume

    def on_batch(trials):
        done = [t for t in trials if t.state.name == "COMPLETE"]
        hv = hypervolume([t.values[0] for t in done], [t.values[1] for t in done])
        n = simulated_count(trials)
        bar.update(max(0, n - bar.n))
        bar.set_postfix(hypervolume=f"{hv:.4f}")

    return on_batch


def run_search(
    target: str | Path | None = None,
    out: str | Path | None = None,
    storage: str | None = None,
    budget: int | None = None,
    device: str = "auto",
    data: str | Path | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    report: bool = True,
    threads: int | None = None,
) -> dict:
    """The whole pipeline; returns the summary (also written to <run>/summary.json)."""
    from dse.study import open_run

    set_threads(threads)
    if budget is not None and budget <= 0:
        raise UserError(f"--budget {budget}: expected a positive number of simulations")
    t_start = time.perf_counter()
    url = storage  # open the storage first: a bad URL fails before minutes of preparation
    storage_obj = open_storage(url) if url else None
    prepared = open_run(target, out=out, data=data, device=device)
    t_prepared = time.perf_counter()
    cfg = prepared.study.search
    budget = int(budget if budget is not None else cfg.budget)
    if budget <= 0:
        raise UserError(f"search.budget = {budget}: expected a positive number of simulations")
    seed = int(cfg.seed if seed is None else seed)
    setup = build_setup(prepared)
    problem = setup.problem
    stage_seconds = {"prepare": t_prepared - t_start, **setup.stage_seconds}
    if url is None:
        url = default_storage_url(Path(prepared.run_dir.path))
        storage_obj = open_storage(url)
    name = study_name or prepared.study.name
    config, fp = _config_and_fingerprint(prepared, problem, cfg.population, seed)
    study = create_or_load_study(storage_obj, name, fp, config, make_sampler(cfg.population, seed), url)
    study.set_user_attr(ATTR_BUDGET, budget)

    t_search = time.perf_counter()
    seeds = _seeds(setup, cfg.population, seed)
    if not study.user_attrs.get(ATTR_SEEDED):
        for g, origin in seeds[:budget]:
            study.enqueue_trial(problem.assignment(g), user_attrs={"origin": origin}, skip_if_exists=True)
        study.set_user_attr(ATTR_SEEDED, True)
    suggest, predict = _surrogate_callbacks(setup, seeds, seed)
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
            on_batch=_hv_progress(problem, bar),
        )
    points = completed_points(problem, study)
    stage_seconds["search"] = time.perf_counter() - t_search
    summary = build_summary(setup, points, seeds, budget, seed, random_baseline=cfg.random_baseline)
    summary["study"] = prepared.study.name
    summary["seconds"] = time.perf_counter() - t_start
    search_wall = time.perf_counter() - t_search
    sim_s = setup.cache.seconds
    n_sims = sum(setup.cache.simulations.values())
    summary["simulations_per_second"] = n_sims / sim_s if sim_s > 0 else None
    summary["outside_simulation_share"] = max(0.0, 1.0 - sim_s / search_wall) if search_wall > 0 else None
    summary["stage_seconds"] = stage_seconds
    summary["storage"] = _redacted(url)
    summary["optuna_study"] = name
    run_dir = Path(prepared.run_dir.path)
    atomic_write_json(run_dir / "summary.json", summary)
    if report:
        _write_report(run_dir)
    return summary


def _redacted(url: str) -> str:
    from dse.search.storage import redact

    return redact(url)


def _seeds(setup: Setup, population: int, seed: int) -> list[tuple[Genome, str]]:
    """First generation: all-exact, the AGN mappings, the surrogate front, the homogeneous assignments."""
    problem = setup.problem
    out: list[tuple[Genome, str]] = []
    seen: set[Genome] = set()

    def add(g, origin):
        if g is not None and g not in seen:
            seen.add(g)
            out.append((g, origin))

    add(problem.all_exact(), "exact")
    for g, origin in setup.agn:
        add(g, origin)
    if setup.surrogate is not None:
        anchors = problem.homogeneous() + [g for g, _ in setup.agn]
        for g in setup.surrogate.suggest([], max(2, population // 2), seeds=anchors, seed=seed):
            add(g, "surrogate")
    for g in _spread(problem.homogeneous()):
        add(g, "homogeneous")
    return out


def _spread(items: list) -> list:
    """Reorder so that every prefix is spread over the list (bisection order): a small budget that cuts
    the seeds still gets homogeneous points across the whole energy range."""
    n = len(items)
    if n <= 2:
        return list(items)
    order = [0, n - 1]
    seen = {0, n - 1}
    step = n - 1
    while len(order) < n:
        step = max(1, step // 2)
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
    return [items[i] for i in order]


def _surrogate_callbacks(setup: Setup, seeds, seed: int):
    sur = setup.surrogate
    if sur is None:
        return None, None
    proposed = {g for g, _ in seeds}
    anchors = [g for g, _ in seeds]

    def suggest(complete, n):
        genomes = sur.suggest(complete, n, exclude=proposed, seeds=anchors, seed=seed)
        proposed.update(genomes)
        return [(g, "surrogate") for g in genomes]

    def predict(genomes):
        return [float(v) for v in sur.predict(genomes)]

    return suggest, predict


def _write_report(run_dir: Path) -> None:
    """Call dse.report's writer if it exists; a failing report never fails the search (logged)."""
    try:
        import dse.report as rep

        writer = getattr(rep, "write_report", None)
        if writer is None:
            from dse.report import html

            writer = getattr(html, "write_report", None)
        if writer is None:
            return
        writer(run_dir)
    except Exception as e:
        log(f"search: the report failed ({type(e).__name__}: {e}); summary.json is written")


def run_worker(
    storage: str,
    study_name: str,
    out: str | Path | None = None,
    data: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> dict:
    """Join a study that `dse search` started: same configuration, read from the storage."""
    from dse.rundir import RunDir, load_prepared, prepare
    from dse.study import Study

    set_threads(threads)
    storage_obj = open_storage(storage)
    probe = load_existing_study(storage_obj, study_name, None, storage)
    config = probe.user_attrs[ATTR_CONFIG]
    budget = int(probe.user_attrs.get(ATTR_BUDGET, config["study"]["search"]["budget"]))
    study_cfg = Study.model_validate(config["study"])
    run_dir = Path(out) if out is not None else Path(config["run_dir"])
    run = RunDir(run_dir)
    if not (run.result_json.is_file() and run.qat_ckpt.is_file()):
        log(f"worker: {run_dir} is not prepared; preparing it from the study stored in the storage")
        prepare(study_cfg, out=run_dir, data=data, device=device)
    prepared = load_prepared(run, data=data, device=device)
    setup = build_setup(prepared, with_error_models=False)
    population = int(config.get("population", study_cfg.search.population))
    seed = int(config.get("seed", 0))
    _, fp = _config_and_fingerprint(prepared, setup.problem, population, seed)
    worker_seed = seed + 1 + (hash(run_dir.resolve()) ^ int(time.time() * 1e6)) % 100_000
    study = create_or_load_study(
        storage_obj, study_name, fp, config, make_sampler(population, worker_seed), storage
    )
    t0 = time.perf_counter()
    with progress(total=budget, desc=f"worker {study_name}") as bar:
        stats = run_trials(
            study,
            setup.problem,
            setup.cache,
            budget,
            population,
            seed=worker_seed,
            on_batch=_hv_progress(setup.problem, bar),
        )
    return {
        "study": study_name,
        "simulated": stats.simulated,
        "cached": stats.cached,
        "failed": stats.failed,
        "seconds": time.perf_counter() - t0,
    }
