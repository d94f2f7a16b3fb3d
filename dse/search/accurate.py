"""The search loop (optuna ask/tell): before each batch, `suggest` (pymoo NSGA-II over the calibrated
surrogate, dse.search.seeding) proposes every candidate and enqueues it; each asked trial is simulated and
told. Only when nothing is proposed (no surrogate, or none left) does the study's own sampler choose.

Early rejection (`confidence`): a candidate is simulated on a first slice of the validation split, then on
doubling slices, and stops when its accuracy is, with that confidence, below the simulated front at its
energy (`SimulationCache.evaluate_staged`); its trial holds the slice's accuracy, `images` and `partial`.
Front points are always complete.

Several processes may run `run_trials` on one study (shared RDB storage): each asks a batch, simulates
it, tells it. The budget counts simulations in full-split equivalents (a candidate rejected after k of
the n validation images costs k/n; trials answered from the cache cost nothing); a trial whose genome was
already simulated — here, in an earlier run, or by another worker — is told the stored values without
simulating again.

Over 400 lines because ask, staged simulation, tell and the re-queue of a dead worker's trials act on one
batch's state; the next cut, when it grows, is the batch bookkeeping into its own record.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dse.search.problem import SearchProblem
from dse.search.records import Genome, Origin, SearchPoint, SimulationFailure
from dse.search.simulate import SimulationCache, Staged, front_threshold_over, val_images
from dse.search.storage import ATTR_PROPOSED, SqliteWorkerLock, beat, requeue_stale_trials, worker_id
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


def trial_cost(trial: optuna.trial.FrozenTrial, n_val: int | None) -> float:
    """Budget a finished trial used: 1 per full simulation, images / n_val for one rejected early."""
    if not is_simulation(trial):
        return 0.0
    images = trial.user_attrs.get("images")
    if n_val is None or images is None:
        return 1.0
    return min(1.0, float(images) / max(1, n_val))


def spent(trials: Sequence[optuna.trial.FrozenTrial], n_val: int | None) -> float:
    """The budget used so far, in full-split simulations."""
    return sum(trial_cost(t, n_val) for t in trials)


def is_partial(trial: optuna.trial.FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("partial", False))


def sync_cache(
    problem: SearchProblem, cache: SimulationCache, trials: Sequence[optuna.trial.FrozenTrial]
) -> None:
    """Put every completed trial's accuracy into the cache (trials of earlier runs and other workers);
    a candidate rejected early goes in as partial (correct of images), to be finished if ever needed."""
    from optuna.trial import TrialState

    for t in trials:
        if t.state == TrialState.COMPLETE and len(t.params) == len(problem.layers):
            g = trial_genome(problem, t)
            if is_partial(t):
                k = int(t.user_attrs.get("images", 0))
                if k > 0 and cache.known(g) is None and g not in cache.partial:
                    cache.partial[g] = (int(round(float(t.values[1]) * k)), k)
            else:
                cache.add(g, float(t.values[1]))
                cache.partial.pop(g, None)


def front_threshold(problem: SearchProblem, cache: SimulationCache) -> Callable[[Genome], float]:
    """threshold(genome): the best complete validation accuracy simulated so far at an energy at most
    the genome's (0 where there is none): the front a candidate must reach to enter it."""
    return front_threshold_over(
        problem.energy_rel,
        lambda: ((problem.energy_rel(h), acc) for (split, h), acc in cache.values.items() if split == "val"),
    )


@dataclass
class StageStats:
    simulated: int = 0
    cached: int = 0
    failed: int = 0
    batches: int = 0
    simulation_seconds: float = 0.0
    first_error: str | None = None
    lost: int = 0  # trials finished by someone else before we told them (stale while we were slow)
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
    confidence: float | None = None,
) -> StageStats:
    """Ask/simulate/tell until `budget` full-split simulations are spent in the study (all workers).

    `predict(genomes)` gives the surrogate's accuracy for a batch (stored as `predicted_accuracy`, made
    before the simulation: the out-of-sample τ); `suggest(simulated, n)` returns up to n (genome, origin)
    candidates to enqueue before each batch (the surrogate's NSGA-II, refit on what has been simulated so
    far; n = 0: refit only). `confidence` in (0, 1) turns on early rejection (None: every candidate on
    the whole split)."""
    from optuna.trial import TrialState

    if budget <= 0:
        raise UserError(f"--budget {budget}: expected a positive number of simulations")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise UserError(f"search.early_rejection_confidence = {confidence}: expected a number in (0, 1)")
    n_val = val_images(cache)
    dists = distributions(problem)
    wid = worker_id()
    stats = StageStats()
    rng = np.random.default_rng(seed)
    idle = 0
    lock = SqliteWorkerLock(study)  # a second process on one SQLite study: one-line UserError
    requeue_stale_trials(study, stale_after_s)
    while True:
        trials = study.get_trials(deepcopy=False)
        sync_cache(problem, cache, trials)
        done = spent(trials, n_val)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if done >= budget - 1e-9:
            break
        if (
            len({g for (s, g) in cache.values if s == "val"} | set(cache.partial)) + stats.failed
            >= problem.size
        ):
            break  # every assignment of the space has been simulated
        free = math.ceil(budget - done - 1e-9) - len(running)
        if free <= 0:  # the rest of the budget is running on other workers: wait for it
            if requeue_stale_trials(study, stale_after_s) == 0:
                time.sleep(poll_s)
            continue
        n = min(batch_size, free)
        if suggest is not None:
            # The first batch of proposals (the surrogate's prior) queues behind the seeds (FIFO); after
            # it, a batch proposes only what the queue leaves, so every later proposal runs in the batch
            # it was fitted for and none is left WAITING when the budget is spent. (All proposals
            # queued behind the waiting trials ran about one seed-count of candidates late.)
            # A batch that proposes nothing still refits: `predict` below uses the model as fitted.
            prior = not study.user_attrs.get(ATTR_PROPOSED)
            want = n if prior else max(0, n - sum(t.state == TrialState.WAITING for t in trials))
            complete = [
                (trial_genome(problem, t), float(t.values[1]))
                for t in trials
                if t.state == TrialState.COMPLETE
            ]
            for g, origin in suggest(complete, want):
                study.enqueue_trial(
                    problem.assignment(g), user_attrs={"origin": origin.to_json()}, skip_if_exists=True
                )
            if prior:
                study.set_user_attr(ATTR_PROPOSED, True)
        if idle >= 2:  # the sampler keeps proposing simulated genomes: inject fresh random ones
            for g in problem.random_genomes(rng, n):
                if cache.known(g) is None:
                    study.enqueue_trial(problem.assignment(g), user_attrs={"origin": "random-restart"})
        asked = []
        for _ in range(n):
            t = study.ask(fixed_distributions=dists)
            # a heartbeat now and every HEARTBEAT_INTERVAL_S while it runs, recorded before the worker
            # attribute: a trial that names its worker has a heartbeat, so a worker killed in between is
            # found by the heartbeat (after the grace period) or, without the attribute, as unclaimed
            # (2x grace). In the other order a kill there left a trial of another host RUNNING for an hour.
            beat(study, t)
            t.set_user_attr("worker", wid)
            asked.append(t)
        asked = _drop_over_budget(study, asked, budget, n_val)
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
                confidence,
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
    lock.release()
    return stats


def _simulate_and_tell(
    study: optuna.Study,
    problem: SearchProblem,
    cache: SimulationCache,
    asked: Sequence[optuna.Trial],
    genomes: Sequence[Genome],
    predicted: Sequence[float | None],
    stats: StageStats,
    confidence: float | None = None,
) -> set[Genome]:
    """Simulate the genomes not in the cache (each once; with early rejection when `confidence` is
    given: `SimulationCache.evaluate_staged`), tell every trial; returns the new genomes.

    Each genome's trials are told as soon as it is simulated (in the cache's lexicographic order, so
    shared prefixes still meet), so a kill loses at most the simulation in progress, not the batch. A trial
    that is no longer RUNNING when told (failed as stale while this worker was slow, or taken by another
    process) is skipped and counted in `stats.lost`."""
    import optuna
    from optuna.trial import TrialState

    new = {g for g in genomes if cache.known(g) is None}  # a partial one continues: a simulation again
    by_genome: dict[Genome, list[int]] = {}
    for i, g in enumerate(genomes):
        by_genome.setdefault(g, []).append(i)
    n_val = val_images(cache)
    threshold = front_threshold(problem, cache)
    for g in sorted(by_genome):
        t0 = time.perf_counter()
        r: Staged | SimulationFailure
        if confidence is not None:
            r = cache.evaluate_staged([g], threshold, confidence)[0]
        else:
            full = cache.evaluate([g])[0]
            r = full if isinstance(full, SimulationFailure) else Staged(full, n_val or 0, True)
        stats.simulation_seconds += time.perf_counter() - t0
        energy = problem.energy_rel(g)
        for k, i in enumerate(by_genome[g]):
            t, p = asked[i], predicted[i]
            first_time = g in new and k == 0
            try:
                if isinstance(r, SimulationFailure):
                    if first_time:
                        msg = str(r)
                        t.set_user_attr("error", msg)
                        stats.failed += 1
                        stats.first_error = stats.first_error or msg
                    study.tell(
                        t, state=TrialState.FAIL
                    )  # a failing genome twice in one batch: one simulation
                    continue
                # params hold the assignment, values (energy_rel, accuracy); attributes the rest. Few of
                # them: optuna commits each attribute separately.
                attrs: dict[str, object] = {} if "origin" in t.user_attrs else {"origin": "nsga2"}
                if p is not None:
                    attrs["predicted_accuracy"] = float(p)
                if first_time:
                    attrs["seconds"] = cache.seconds_by_genome.get(("val", g), 0.0)
                    if n_val is not None:
                        attrs["images"] = r.images or n_val
                    if not r.complete:
                        attrs["partial"] = True
                    stats.simulated += 1
                else:
                    attrs["cached"] = True
                    stats.cached += 1
                for key, v in attrs.items():
                    t.set_user_attr(key, v)
                study.tell(t, [energy, float(r.accuracy)])
            except optuna.exceptions.UpdateFinishedTrialError:
                stats.lost += 1  # its result stays in the cache; the re-queued copy is answered from it
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


def _drop_over_budget(
    study: optuna.Study, asked: list[optuna.Trial], budget: int, n_val: int | None = None
) -> list[optuna.Trial]:
    """Several workers may ask at the same moment from the same snapshot: rank every trial that is or may
    become a simulation (finished simulations at their cost, running trials at 1, by trial number) and
    give back our trials that start beyond the budget (told FAIL with `skipped`, never simulated, not
    counted)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counted = sorted(
        (t.number, 1.0 if t.state == TrialState.RUNNING else trial_cost(t, n_val))
        for t in trials
        if is_simulation(t) or t.state == TrialState.RUNNING
    )
    allowed: set[int] = set()
    used = 0.0
    for number, cost in counted:
        if used >= budget - 1e-9:
            break
        allowed.add(number)
        used += cost
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
        if requeue_stale_trials(study) == 0:  # that worker died: its trial is FAIL, simulate it here
            time.sleep(poll_s)


def completed_points(problem: SearchProblem, study: optuna.Study) -> list[SearchPoint]:
    """Every simulated candidate of the study (one per genome, first trial that simulated it; for a
    genome rejected early and later finished, the trial that finished it)."""
    from optuna.trial import TrialState

    out: list[SearchPoint] = []
    seen: dict[Genome, int] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        g = trial_genome(problem, t)
        if g in seen and not (out[seen[g]].partial and not is_partial(t)):
            continue  # a genome rejected early and finished later: its complete trial counts
        point = problem.point(
            g,
            float(t.values[1]),
            trial=t.number,
            predicted=t.user_attrs.get("predicted_accuracy"),
            origin=Origin.from_json(t.user_attrs.get("origin", "nsga2")),
        )
        images = t.user_attrs.get("images")
        point = dataclasses.replace(
            point, images=None if images is None else int(images), partial=is_partial(t)
        )
        if g in seen:
            out[seen[g]] = point
        else:
            seen[g] = len(out)
            out.append(point)
    return out
