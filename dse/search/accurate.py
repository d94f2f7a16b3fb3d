"""The accurate stage: optuna NSGA-II (ask/tell) where every trial is a behavioural simulation.

Several processes may run `run_trials` on one study (shared RDB storage): each asks a batch, simulates
it, tells it. The budget counts simulations (trials that ran a simulation, successful or failed), not
trials answered from the cache; a trial whose genome was already simulated — here, in an earlier run, or
by another worker — is told the stored values without simulating again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dse.search.problem import Genome, SearchProblem
from dse.search.simulate import SimulationCache
from dse.search.storage import requeue_stale_trials, worker_id
from dse.util import UserError


def distributions(problem: SearchProblem) -> dict:
    from optuna.distributions import CategoricalDistribution

    return {name: CategoricalDistribution(list(ch)) for name, ch in zip(problem.layers, problem.choices)}


def trial_genome(problem: SearchProblem, trial) -> Genome:
    return tuple(str(trial.params[name]) for name in problem.layers)


def is_simulation(trial) -> bool:
    """Did this finished trial cost a simulation (and so count against the budget)?"""
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:
        return not trial.user_attrs.get("cached", False)
    if trial.state == TrialState.FAIL:
        return "error" in trial.user_attrs
    return False


def simulated_count(trials) -> int:
    return sum(1 for t in trials if is_simulation(t))


def sync_cache(problem: SearchProblem, cache: SimulationCache, trials) -> None:
    """Put every completed trial's accuracy into the cache (trials of earlier runs and other workers)."""
    from optuna.trial import TrialState

    for t in trials:
        if t.state == TrialState.COMPLETE and len(t.params) == len(problem.layers):
            cache.add(trial_genome(problem, t), float(t.values[1]))


@dataclass
class StageStats:
    simulated: int = 0
    cached: int = 0
    failed: int = 0
    batches: int = 0
    simulation_seconds: float = 0.0
    first_error: str | None = None
    history: list[tuple[int, float]] = field(default_factory=list)


def run_trials(
    study,
    problem: SearchProblem,
    cache: SimulationCache,
    budget: int,
    batch_size: int,
    *,
    seed: int | None = 0,
    predict: Callable[[Sequence[Genome]], Sequence[float]] | None = None,
    suggest: Callable[[list[tuple[Genome, float]], int], list[tuple[Genome, str]]] | None = None,
    on_batch: Callable[[list], None] | None = None,
    stale_after_s: float = 3600.0,
    poll_s: float = 0.5,
    max_idle_batches: int = 20,
) -> StageStats:
    """Ask/simulate/tell until `budget` simulations exist in the study (counting all workers).

    `predict(genomes)` gives the surrogate's accuracy for a batch (stored as `predicted_accuracy`);
    `suggest(simulated, n)` returns up to n (genome, origin) candidates to enqueue before each batch (the
    surrogate front, refit on what has been simulated so far)."""
    from optuna.trial import TrialState

    if budget <= 0:
        raise UserError(f"--budget {budget}: expected a positive number of simulations")
    dists = distributions(problem)
    wid = worker_id()
    stats = StageStats()
    rng = np.random.default_rng(seed)
    idle = 0
    requeue_stale_trials(study, stale_after_s)
    while True:
        trials = study.get_trials(deepcopy=False)
        sync_cache(problem, cache, trials)
        done = simulated_count(trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if done >= budget:
            break
        if len({g for (s, g) in cache.values if s == "val"}) + stats.failed >= problem.size:
            break  # every assignment of the space has been simulated
        free = budget - done - len(running)
        if free <= 0:  # the rest of the budget is running on other workers: wait for it
            if requeue_stale_trials(study, stale_after_s) == 0:
                time.sleep(poll_s)
            continue
        n = min(batch_size, free)
        if suggest is not None:
            complete = [
                (trial_genome(problem, t), float(t.values[1]))
                for t in trials
                if t.state == TrialState.COMPLETE
            ]
            for g, origin in suggest(complete, max(1, n // 4)):
                study.enqueue_trial(problem.assignment(g), user_attrs={"origin": origin}, skip_if_exists=True)
        if idle >= 2:  # the sampler keeps proposing simulated genomes: inject fresh random ones
            for g in problem.random_genomes(rng, n):
                if cache.known(g) is None:
                    study.enqueue_trial(problem.assignment(g), user_attrs={"origin": "random-restart"})
        asked = []
        for _ in range(n):
            t = study.ask(fixed_distributions=dists)
            t.set_user_attr("worker", wid)
            asked.append(t)
        genomes = [trial_genome(problem, t) for t in asked]
        _wait_for_running_duplicates(problem, study, cache, genomes, {t.number for t in asked}, poll_s)
        predicted = list(predict(genomes)) if predict is not None else [None] * n
        t0 = time.perf_counter()
        new = {g for g in genomes if cache.known(g) is None}
        results = cache.evaluate(genomes)
        stats.simulation_seconds += time.perf_counter() - t0
        simulated_here: set[Genome] = set()
        for t, g, r, p in zip(asked, genomes, results, predicted):
            energy = problem.energy_rel(g)
            # params hold the assignment, values (energy_rel, accuracy); attributes the rest. Few of them:
            # optuna commits each attribute separately.
            attrs: dict = {} if "origin" in t.user_attrs else {"origin": "nsga2"}
            if p is not None:
                attrs["predicted_accuracy"] = float(p)
            first_time = g in new and g not in simulated_here
            simulated_here.add(g)
            if isinstance(r, BaseException):
                if not first_time:  # the same failing genome twice in one batch: no second simulation
                    study.tell(t, state=TrialState.FAIL)
                    continue
                msg = f"{type(r).__name__}: {r}".splitlines()[0][:500]
                t.set_user_attr("error", msg)
                stats.failed += 1
                stats.first_error = stats.first_error or msg
                study.tell(t, state=TrialState.FAIL)
                continue
            if not first_time:
                attrs["cached"] = True
            if first_time:
                attrs["seconds"] = cache.seconds_by_genome.get(("val", g), 0.0)
                stats.simulated += 1
            else:
                stats.cached += 1
            for k, v in attrs.items():
                t.set_user_attr(k, v)
            study.tell(t, [energy, float(r)])
        stats.batches += 1
        idle = idle + 1 if not new else 0
        if idle > max_idle_batches:
            break
        if stats.failed and stats.failed == stats.simulated + stats.failed and stats.failed >= min(budget, 5):
            raise UserError(
                f"search: every candidate failed to simulate ({stats.failed} of {stats.failed}); "
                f"first error: {stats.first_error}"
            )
        if on_batch is not None:
            on_batch(study.get_trials(deepcopy=False))
    if (
        stats.failed
        and stats.simulated == 0
        and simulated_count(study.get_trials(deepcopy=False)) == stats.failed
    ):
        raise UserError(f"search: every candidate failed to simulate; first error: {stats.first_error}")
    return stats


def _wait_for_running_duplicates(
    problem, study, cache, genomes, own: set[int], poll_s: float, timeout_s=120.0
):
    """If another worker is simulating one of these genomes right now, wait (bounded) for its result
    instead of simulating it a second time."""
    from optuna.trial import TrialState

    wanted = {g for g in genomes if cache.known(g) is None}
    if not wanted:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        others = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number not in own and len(t.params) == len(problem.layers)
        ]
        busy = {trial_genome(problem, t) for t in others} & wanted
        if not busy or time.monotonic() > deadline:
            return
        time.sleep(poll_s)
        sync_cache(problem, cache, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        wanted = {g for g in wanted if cache.known(g) is None}


def completed_points(problem: SearchProblem, study) -> list[dict]:
    """Every simulated candidate of the study (one per genome, first trial that simulated it)."""
    from optuna.trial import TrialState

    out, seen = [], set()
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        g = trial_genome(problem, t)
        if g in seen:
            continue
        seen.add(g)
        out.append(
            {
                "trial": t.number,
                "genome": g,
                "energy_rel": float(t.values[0]),
                "accuracy": float(t.values[1]),
                "predicted_accuracy": t.user_attrs.get("predicted_accuracy"),
                "origin": t.user_attrs.get("origin", "nsga2"),
                "cached": bool(t.user_attrs.get("cached", False)),
            }
        )
    return out
