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
from typing import TYPE_CHECKING

import numpy as np

from dse.search.problem import SearchProblem
from dse.search.records import Genome, Origin, SearchPoint, SimulationFailure
from dse.search.simulate import SimulationCache
from dse.search.storage import requeue_stale_trials, worker_id
from dse.util import UserError

if TYPE_CHECKING:
    import optuna


def distributions(problem: SearchProblem) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import CategoricalDistribution

    return {name: CategoricalDistribution(list(ch)) for name, ch in zip(problem.layers, problem.choices)}


def trial_genome(problem: SearchProblem, trial: optuna.trial.FrozenTrial | optuna.Trial) -> Genome:
    return tuple(str(trial.params[name]) for name in problem.layers)


def is_simulation(trial: optuna.trial.FrozenTrial) -> bool:
    """Did this finished trial cost a simulation (and so count against the budget)?"""
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:
        return not trial.user_attrs.get("cached", False)
    if trial.state == TrialState.FAIL:
        return "error" in trial.user_attrs
    return False


def simulated_count(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    return sum(1 for t in trials if is_simulation(t))


def sync_cache(
    problem: SearchProblem, cache: SimulationCache, trials: Sequence[optuna.trial.FrozenTrial]
) -> None:
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
    study: optuna.Study,
    problem: SearchProblem,
    cache: SimulationCache,
    budget: int,
    batch_size: int,
    *,
    seed: int | None = 0,
    predict: Callable[[Sequence[Genome]], Sequence[float]] | None = None,
    suggest: Callable[[list[tuple[Genome, float]], int], list[tuple[Genome, Origin]]] | None = None,
    on_batch: Callable[[list[optuna.trial.FrozenTrial]], None] | None = None,
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
            for g, origin in suggest(complete, max(1, n // 3)):
                study.enqueue_trial(
                    problem.assignment(g), user_attrs={"origin": origin.to_json()}, skip_if_exists=True
                )
        if idle >= 2:  # the sampler keeps proposing simulated genomes: inject fresh random ones
            for g in problem.random_genomes(rng, n):
                if cache.known(g) is None:
                    study.enqueue_trial(problem.assignment(g), user_attrs={"origin": "random-restart"})
        asked = []
        for _ in range(n):
            t = study.ask(fixed_distributions=dists)
            t.set_user_attr("worker", wid)
            asked.append(t)
        asked = _drop_over_budget(study, asked, budget)
        if not asked:
            continue
        n = len(asked)
        genomes = [trial_genome(problem, t) for t in asked]
        predicted = list(predict(genomes)) if predict is not None else [None] * n
        # genomes another worker is simulating in an earlier-numbered trial are done last: first
        # simulate and tell ours (that worker may be waiting for them), then wait for its results
        contested = _contested(problem, study, cache, asked, genomes)
        free_idx = [i for i in range(n) if genomes[i] not in contested]
        contested_idx = [i for i in range(n) if genomes[i] in contested]
        new: set[Genome] = set()
        for k, part in enumerate((free_idx, contested_idx)):
            if not part:
                continue
            if k == 1:
                _wait_for_running_duplicates(problem, study, cache, asked, genomes, poll_s)
            new |= _simulate_and_tell(
                study,
                problem,
                cache,
                [asked[i] for i in part],
                [genomes[i] for i in part],
                [predicted[i] for i in part],
                stats,
            )
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


def _simulate_and_tell(
    study: optuna.Study,
    problem: SearchProblem,
    cache: SimulationCache,
    asked: Sequence[optuna.Trial],
    genomes: Sequence[Genome],
    predicted: Sequence[float | None],
    stats: StageStats,
) -> set[Genome]:
    """Simulate the genomes not in the cache (each once), tell every trial; returns the new genomes."""
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    new = {g for g in genomes if cache.known(g) is None}
    results = cache.evaluate(genomes)
    stats.simulation_seconds += time.perf_counter() - t0
    simulated_here: set[Genome] = set()
    for t, g, r, p in zip(asked, genomes, results, predicted):
        energy = problem.energy_rel(g)
        # params hold the assignment, values (energy_rel, accuracy); attributes the rest. Few of them:
        # optuna commits each attribute separately.
        attrs: dict[str, object] = {} if "origin" in t.user_attrs else {"origin": "nsga2"}
        if p is not None:
            attrs["predicted_accuracy"] = float(p)
        first_time = g in new and g not in simulated_here
        simulated_here.add(g)
        if isinstance(r, SimulationFailure):
            if first_time:
                msg = str(r)
                t.set_user_attr("error", msg)
                stats.failed += 1
                stats.first_error = stats.first_error or msg
            study.tell(t, state=TrialState.FAIL)  # a failing genome twice in one batch: one simulation
            continue
        if first_time:
            attrs["seconds"] = cache.seconds_by_genome.get(("val", g), 0.0)
            stats.simulated += 1
        else:
            attrs["cached"] = True
            stats.cached += 1
        for key, v in attrs.items():
            t.set_user_attr(key, v)
        study.tell(t, [energy, float(r)])
    return new


def _contested(
    problem: SearchProblem,
    study: optuna.Study,
    cache: SimulationCache,
    asked: Sequence[optuna.Trial],
    genomes: Sequence[Genome],
) -> set[Genome]:
    """Our genomes that another worker is simulating in a trial numbered before ours (the cache is synced
    with the study first, so a genome finished meanwhile is not contested)."""
    from optuna.trial import TrialState

    mine: dict[Genome, int] = {}
    for a, g in zip(asked, genomes):
        mine.setdefault(g, a.number)
    own = {a.number for a in asked}
    trials = study.get_trials(deepcopy=False)
    sync_cache(problem, cache, trials)
    out: set[Genome] = set()
    for t in trials:
        if t.state != TrialState.RUNNING or t.number in own or len(t.params) != len(problem.layers):
            continue
        g = trial_genome(problem, t)
        if g in mine and t.number < mine[g] and cache.known(g) is None:
            out.add(g)
    return out


def _drop_over_budget(study: optuna.Study, asked: list[optuna.Trial], budget: int) -> list[optuna.Trial]:
    """Several workers may ask at the same moment from the same snapshot: rank every trial that is or may
    become a simulation (finished simulations and running trials, by trial number) and give back our
    trials ranked beyond the budget (told FAIL with `skipped`, never simulated, not counted)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counted = sorted(t.number for t in trials if is_simulation(t) or t.state == TrialState.RUNNING)
    allowed = set(counted[:budget])
    keep = []
    for t in asked:
        if t.number in allowed:
            keep.append(t)
        else:
            t.set_user_attr("skipped", "over budget (another worker took the last simulations)")
            study.tell(t, state=TrialState.FAIL)
    return keep


def _wait_for_running_duplicates(
    problem: SearchProblem,
    study: optuna.Study,
    cache: SimulationCache,
    asked: Sequence[optuna.Trial],
    genomes: Sequence[Genome],
    poll_s: float,
    timeout_s: float = 300.0,
) -> None:
    """If another worker is simulating one of these genomes in a trial numbered before ours, wait
    (bounded) for its result instead of simulating it a second time. The lower number simulates, and a
    worker tells all its uncontested trials before it waits, so two workers never wait for each other."""
    deadline = time.monotonic() + timeout_s
    while _contested(problem, study, cache, asked, genomes) and time.monotonic() <= deadline:
        time.sleep(poll_s)


def completed_points(problem: SearchProblem, study: optuna.Study) -> list[SearchPoint]:
    """Every simulated candidate of the study (one per genome, first trial that simulated it)."""
    from optuna.trial import TrialState

    out: list[SearchPoint] = []
    seen: set[Genome] = set()
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        g = trial_genome(problem, t)
        if g in seen:
            continue
        seen.add(g)
        out.append(
            problem.point(
                g,
                float(t.values[1]),
                trial=t.number,
                predicted=t.user_attrs.get("predicted_accuracy"),
                origin=Origin.from_json(t.user_attrs.get("origin", "nsga2")),
            )
        )
    return out
