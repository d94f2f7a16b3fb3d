"""The search loop of issue 15 on the synthetic problem: the surrogate's NSGA-II proposes every candidate,
early rejection stops only candidates that are, with the stated confidence, below the front (front points
are never partial), the budget counts images, and the honest figures (out-of-sample τ, hypervolume by
origin) are computed from what was stored before each simulation."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from synthetic import SlicedSyntheticEvaluator, SyntheticEvaluator, synthetic_problem

from dse.search.accurate import completed_points, run_trials, spent
from dse.search.pareto import hypervolume
from dse.search.records import Origin, front_of
from dse.search.simulate import SimulationCache, accuracy_upper_bound, slice_plan
from dse.search.storage import create_or_load_study, make_sampler
from dse.search.summary import hypervolume_by_origin, prospective_tau
from dse.search.surrogate import Surrogate
from dse.util import UserError


def _surrogate(problem, seed=1):
    e = problem.energy_table()
    rng = np.random.default_rng(seed)
    distortion = (1 - e) ** 3 * rng.uniform(0.5, 2.0, size=(len(problem.layers), 1))
    return Surrogate(problem, distortion, quant_accuracy=0.95, chance_accuracy=0.1, generations=40)


def _study(problem, seed=0):
    return create_or_load_study(
        optuna.storages.InMemoryStorage(), "s", problem.fingerprint(), {}, make_sampler(8, seed)
    )


def test_upper_bound_covers_the_whole_split_accuracy_with_the_stated_confidence():
    rng = np.random.default_rng(0)
    n, k, alpha = 1000, 125, 0.05
    misses = 0
    trials = 2000
    for _ in range(trials):
        p = rng.uniform(0.5, 0.99)
        outcome = rng.random(n) < p
        ub = accuracy_upper_bound(int(outcome[:k].sum()), k, n, alpha)
        misses += ub < outcome.mean()
    assert misses / trials <= alpha  # the bound fails at most alpha of the time
    assert accuracy_upper_bound(90, 100, 100, alpha) == pytest.approx(0.9)  # seen everything: exact
    assert accuracy_upper_bound(100, 100, 1000, alpha) == 1.0
    assert slice_plan(1000) == [125, 250, 500, 1000] and slice_plan(100) == [64, 100]
    # no look after more than 3/4 of the split (700 images: 87, 174, 348, then the whole, not 696)
    assert slice_plan(700) == [87, 174, 348, 700] and slice_plan(700, 64, 6) == [64, 128, 256, 512, 700]
    assert slice_plan(2000, 64, 6) == [64, 128, 256, 512, 1024, 2000]


def test_staged_evaluation_stops_only_candidates_below_the_threshold():
    problem = synthetic_problem(4, 8)
    ev = SlicedSyntheticEvaluator(problem, n=800)
    cache = SimulationCache(ev)
    good = ("exact",) * 4  # accuracy 0.95
    bad = ("m7",) * 4  # far below
    assert ev.accuracy(bad) < 0.5
    out = cache.evaluate_staged([good, bad], threshold=lambda g: 0.9, confidence=0.95)
    assert out[0].complete and out[0].images == 800 and out[0].accuracy == pytest.approx(ev.accuracy(good))
    # stopped after the first slice: 64 images, the search's and the random baseline's first look
    assert not out[1].complete and out[1].images == 64
    assert cache.images["val"] == 864 and cache.known(bad) is None and bad in cache.partial
    # finishing a rejected candidate simulates only the rest of the split, and agrees with the whole
    assert cache.evaluate([bad])[0] == pytest.approx(ev.accuracy(bad))
    assert cache.images["val"] == 1600 and bad not in cache.partial
    assert (bad, 64, 800) in ev.slices
    with pytest.raises(UserError, match="early_rejection_confidence"):
        run_trials(_study(problem), problem, cache, 5, 4, confidence=1.0)


def test_the_surrogate_proposes_every_candidate_front_points_are_complete_and_the_budget_counts_images():
    problem = synthetic_problem(6, 10)
    n = 400
    ev = SlicedSyntheticEvaluator(problem, n=n)
    cache = SimulationCache(ev)
    sur = _surrogate(problem)
    proposed: set = set()

    def suggest(complete, k):
        gs = sur.suggest(complete, k, exclude=proposed, seed=0, explore=k // 4)
        proposed.update(gs)
        explored = set(sur.last_explore)
        return [(g, Origin("explore" if g in explored else "surrogate")) for g in gs]

    def predict(genomes):
        return [float(v) for v in sur.predict(genomes)]

    study = _study(problem)
    seeds = problem.homogeneous()
    for g in seeds:
        study.enqueue_trial(problem.assignment(g), user_attrs={"origin": "homogeneous"})
    budget = 30
    run_trials(study, problem, cache, budget, 8, seed=0, predict=predict, suggest=suggest, confidence=0.95)
    trials = study.get_trials()
    assert budget <= spent(trials, n) < budget + 1
    pts = completed_points(problem, study)
    origins = {p.origin.kind for p in pts}
    assert origins <= {"homogeneous", "surrogate", "explore"} and {"surrogate", "explore"} <= origins
    assert sum(p.images for p in pts) == cache.images["val"]
    rejected = [p for p in pts if p.partial]
    assert rejected and len(pts) > budget  # early rejection bought more candidates for the same images
    front = [pts[i] for i in front_of(pts)]
    assert front and not any(p.partial for p in front) and all(p.images == n for p in front)
    # a rejected candidate really was below the front at its energy (by its whole-split accuracy too)
    full = [p for p in pts if not p.partial]
    for p in rejected:
        best = max((q.accuracy for q in full if q.energy_rel <= p.energy_rel), default=0.0)
        assert ev.accuracy(p.genome) < best
    # the search beats random search with the same budget and the same seeds
    rng = np.random.default_rng(5)
    rand = [g for g in problem.random_genomes(rng, budget)]
    rand_acc = [ev.accuracy(g) for g in rand + seeds]
    hv_random = hypervolume([problem.energy_rel(g) for g in rand + seeds], rand_acc)
    hv_search = hypervolume([p.energy_rel for p in full], [p.accuracy for p in full])
    assert hv_search > hv_random
    # every candidate carries the prediction made before it was simulated: the out-of-sample tau
    assert all(p.predicted_accuracy is not None for p in pts if p.origin.kind != "homogeneous")
    tau = prospective_tau(pts)
    assert tau is not None and tau > 0.3


def test_after_the_prior_batch_each_proposal_runs_in_the_batch_it_was_made_for():
    problem = synthetic_problem(6, 10)
    ev = SlicedSyntheticEvaluator(problem, n=400)
    cache = SimulationCache(ev)
    sur = _surrogate(problem)

    def started():  # genomes in the order their simulation began (the first slice of each)
        return list(dict.fromkeys(g for g, start, _ in ev.slices if start == 0))

    made: list[tuple[int, list]] = []  # (candidates started when proposed, the proposals)
    fitted_on: list[int] = []

    def suggest(complete, k):
        fitted_on.append(len(complete))
        gs = sur.suggest(complete, k, exclude={g for _, b in made for g in b}, seed=0, explore=k // 4)
        made.append((len(started()), gs))
        return [(g, Origin("surrogate")) for g in gs]

    study = _study(problem)
    seeds = problem.homogeneous()
    for g in seeds:
        study.enqueue_trial(problem.assignment(g), user_attrs={"origin": "homogeneous"})
    batch = 4
    stats = run_trials(study, problem, cache, 30, batch, seed=0, suggest=suggest, confidence=0.95)
    assert len(made) > 2 and len(made[0][1]) == batch  # the prior batch: a whole batch behind the seeds
    # every batch refits, also one that proposes nothing (the seeds still queued): its predictions use it
    assert len(fitted_on) == stats.batches and fitted_on == sorted(fitted_on) and fitted_on[-1] > 0
    assert [b for _, b in made if not b]
    assert all(len(b) <= batch for _, b in made)
    order = started()
    for at, proposals in made[1:]:
        for g in proposals:
            assert g in order and at <= order.index(g) < at + batch
    assert not [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]


def test_prospective_tau_and_hypervolume_by_origin():
    problem = synthetic_problem(3, 6)
    ev = SyntheticEvaluator(problem)
    genomes = problem.random_genomes(np.random.default_rng(0), 20)
    pts = [
        problem.point(g, ev.accuracy(g), predicted=ev.accuracy(g) - 0.01, origin=Origin("a")) for g in genomes
    ]
    assert prospective_tau(pts) == pytest.approx(1.0)
    flipped = [problem.point(p.genome, p.accuracy, predicted=-p.accuracy, origin=p.origin) for p in pts]
    assert prospective_tau(flipped) == pytest.approx(-1.0)
    import dataclasses

    b = [dataclasses.replace(p, origin=Origin("b")) for p in pts[:5]]
    partial = [dataclasses.replace(p, origin=Origin("c"), partial=True) for p in pts[5:]]
    hv = hypervolume_by_origin(pts + b + partial)
    assert set(hv) == {"a", "b"}  # partial points add nothing
    assert hv["a"] == pytest.approx(hypervolume([p.energy_rel for p in pts], [p.accuracy for p in pts]))
    assert hv["b"] <= hv["a"]


def test_model_simulator_slices_add_up_to_the_whole_split_with_the_prefix_cache(tiny_digits_run):
    from dse.prepare import load_prepared
    from dse.rundir import RunDir
    from dse.search.model_sim import ModelSimulator
    from dse.search.setup import build_problem

    prepared = load_prepared(RunDir(tiny_digits_run), device="cpu")
    problem, mults = build_problem(prepared)
    sim = ModelSimulator(prepared, problem, mults, batch_size=64)
    n = sim.size("val")
    cheap = tuple(min(ch, key=lambda m: problem.energies[m]) for ch in problem.choices)
    mixed = (problem.choices[0][-1],) + tuple(ch[0] for ch in problem.choices[1:])
    for g in (cheap, mixed):
        k = n // 3 + 5  # not a multiple of the batch: the cache must key on the rows, not the first row
        parts = sim.correct(g, "val", 0, k) + sim.correct(g, "val", k, n)
        assert parts == sim.correct(g, "val", 0, n) == round(sim.accuracy(g) * n)
    fresh = ModelSimulator(prepared, problem, mults, batch_size=64, prefix_cache=False)
    assert fresh.correct(cheap, "val", 0, n) == sim.correct(cheap, "val", 0, n)
    assert sim.cache is not None and sim.cache.hits > 0
