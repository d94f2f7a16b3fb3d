"""The search engine on a synthetic problem (fast): hypervolume, the genome cache, budget, seeds,
determinism, resume after kill -9, bad input, the surrogate's ranking, and two workers on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic import SyntheticEvaluator, synthetic_problem

from dse.search.accurate import completed_points, run_trials, simulated_count
from dse.search.pareto import hypervolume, pareto_mask
from dse.search.problem import SearchProblem
from dse.search.simulate import SimulationCache
from dse.search.storage import create_or_load_study, make_sampler, open_storage
from dse.search.surrogate import Surrogate
from dse.util import UserError

SCRIPT = Path(__file__).with_name("test_search_worker_script.py")
DSE = [sys.executable, "-c", "from dse.cli import main; main()"]


def _study(tmp_path, problem, name="s", seed=0, population=8, storage=None):
    """An optuna study in memory (the engine tests; SQLite and PostgreSQL have their own tests below)."""
    import optuna

    storage = storage or optuna.storages.InMemoryStorage()
    return create_or_load_study(storage, name, problem.fingerprint(), {}, make_sampler(population, seed))


def test_hypervolume_is_the_dominated_area_with_reference_energy_1_accuracy_0():
    assert hypervolume([0.5], [0.8]) == pytest.approx(0.4)
    # two steps: [0.2, 0.5] x 0.5 + [0.5, 1] x 0.8
    assert hypervolume([0.5, 0.2], [0.8, 0.5]) == pytest.approx(0.3 * 0.5 + 0.5 * 0.8)
    # a dominated point adds nothing; points beyond the reference add nothing
    assert hypervolume([0.5, 0.2, 0.6, 1.2], [0.8, 0.5, 0.7, 0.99]) == pytest.approx(0.55)
    assert list(pareto_mask([0.5, 0.2, 0.6], [0.8, 0.5, 0.7])) == [True, True, False]


def test_cache_never_simulates_a_genome_twice_and_keys_on_the_genome():
    problem = synthetic_problem(3, 4)
    ev = SyntheticEvaluator(problem)
    cache = SimulationCache(ev)
    g1, g2 = ("m1", "m2", "exact"), ("m2", "m1", "exact")  # same multipliers, other layers: other genome
    a = cache.evaluate([g1, g2, g1])
    b = cache.evaluate([g2, g1])
    assert a[0] == a[2] == b[1] and a[1] == b[0]
    assert a[0] != a[1]
    assert sorted(g for g, _ in ev.calls) == sorted([g1, g2])
    assert cache.simulations["val"] == 2
    cache.evaluate([g1], "test")  # another split is another measurement
    assert cache.simulations["test"] == 1


def test_search_spends_exactly_the_budget_and_never_simulates_twice(tmp_path):
    problem = synthetic_problem(4, 6)
    ev = SyntheticEvaluator(problem)
    study = _study(tmp_path, problem)
    seeds = problem.homogeneous()
    for g in seeds:
        study.enqueue_trial(problem.assignment(g), user_attrs={"origin": "homogeneous"})
    study.enqueue_trial(problem.assignment(seeds[0]), user_attrs={"origin": "duplicate"})  # cache must hit
    stats = run_trials(study, problem, SimulationCache(ev), budget=30, batch_size=8, seed=0)
    trials = study.get_trials()
    assert simulated_count(trials) == 30 == stats.simulated
    assert len(ev.calls) == 30 and len(set(ev.calls)) == 30
    assert stats.cached >= 1
    dup = [t for t in trials if t.user_attrs.get("origin") == "duplicate"]
    assert dup and dup[0].user_attrs.get("cached") is True
    # seeds went first; every trial holds its assignment (params) and values
    first = [tuple(t.params[n] for n in problem.layers) for t in trials[: len(seeds)]]
    assert first == seeds
    pts = completed_points(problem, study)
    assert all(p.energy_rel == pytest.approx(problem.energy_rel(p.genome)) for p in pts)


def test_same_seed_gives_the_same_search(tmp_path):
    problem = synthetic_problem(4, 6)
    runs = []
    for i in range(2):
        d = tmp_path / str(i)
        d.mkdir()
        study = _study(d, problem, seed=3)
        run_trials(study, problem, SimulationCache(SyntheticEvaluator(problem)), 24, 8, seed=3)
        runs.append([(tuple(t.params.values()), tuple(t.values or ())) for t in study.get_trials()])
    assert runs[0] == runs[1]


def test_bad_input_budget_empty_space_failing_candidates_other_config(tmp_path):
    problem = synthetic_problem(3, 4)
    study = _study(tmp_path, problem)
    with pytest.raises(UserError, match="budget"):
        run_trials(study, problem, SimulationCache(SyntheticEvaluator(problem)), 0, 4)
    with pytest.raises(UserError, match="empty search space"):
        SearchProblem.build(["a", "b"], [1, 1], [["x"], []], {"x": 1.0})

    class Broken:
        def accuracy(self, genome, split="val"):
            raise RuntimeError("kernel exploded")

    with pytest.raises(UserError, match="every candidate failed.*kernel exploded"):
        run_trials(_study(tmp_path, problem), problem, SimulationCache(Broken()), 10, 4)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    _study(tmp_path, problem, storage=open_storage(url))
    other = synthetic_problem(3, 5)
    with pytest.raises(UserError, match="different configuration.*--study-name"):
        create_or_load_study(open_storage(url), "s", other.fingerprint(), {}, make_sampler(8, 0), url)


def test_cli_unreachable_storage_is_one_line_exit_2(tmp_path):
    r = subprocess.run(
        [
            *DSE,
            "worker",
            "digits",
            "--out",
            str(tmp_path / "run"),
            "--storage",
            "postgresql://u:secret@127.0.0.1:1/none",
            "--study",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("error: --storage") and "Traceback" not in r.stderr
    assert "secret" not in r.stderr  # the password is not printed
    r = subprocess.run(
        [*DSE, "search", "--budget", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--budget 0" in r.stderr and "Traceback" not in r.stderr


def test_surrogate_ranks_candidates_and_its_front_is_cheap_for_its_accuracy():
    problem = synthetic_problem(6, 10)
    ev = SyntheticEvaluator(problem)
    e = problem.energy_table()
    rng = np.random.default_rng(1)
    # error-model stand-in: the right shape per multiplier, per-layer factors off by up to 2x
    distortion = (1 - e) ** 3 * rng.uniform(0.5, 2.0, size=(len(problem.layers), 1))
    sur = Surrogate(problem, distortion, quant_accuracy=0.95, chance_accuracy=0.1)
    genomes = problem.random_genomes(rng, 60)
    acc = [ev.accuracy(g) for g in genomes]
    sur.fit(genomes, acc)
    held_out = problem.random_genomes(np.random.default_rng(2), 60)
    tau = sur.kendall_tau(held_out, [ev.accuracy(g) for g in held_out])
    assert tau is not None and tau >= 0.6
    picks = sur.suggest(list(zip(genomes, acc)), 5, seed=0)
    assert 1 <= len(picks) <= 5 and not set(picks) & set(genomes)
    # the surrogate's picks sit near the true front: hardly any random assignment dominates one of them
    rand_e = np.array([problem.energy_rel(g) for g in held_out])
    rand_a = np.array([ev.accuracy(g) for g in held_out])
    for g in picks:
        e, a = problem.energy_rel(g), ev.accuracy(g)
        assert np.mean((rand_e <= e) & (rand_a >= a)) <= 0.1


@pytest.mark.slow
def test_resume_after_kill_9_keeps_finished_trials_and_reaches_the_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    log = tmp_path / "sims.jsonl"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--storage",
        url,
        "--budget",
        "40",
        "--delay",
        "0.15",
        "--log",
        str(log),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    problem = synthetic_problem(5, 8)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it mid-run, with trials finished and a batch running
        if log.exists() and len(log.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    storage = open_storage(url)
    study = create_or_load_study(storage, "synthetic", problem.fingerprint(), {}, make_sampler(8, 0), url)
    before = {t.number: (t.params, t.values) for t in study.get_trials() if t.state.name == "COMPLETE"}
    running = [t.number for t in study.get_trials() if t.state.name == "RUNNING"]
    assert before and running, "the kill should leave finished and running trials"
    r = subprocess.run(cmd[:-4] + ["--log", str(log)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trials = study.get_trials()
    after = {t.number: (t.params, t.values) for t in trials if t.state.name == "COMPLETE"}
    assert all(after[n] == v for n, v in before.items())  # every finished trial kept as it was
    assert simulated_count(trials) == 40
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    requeued = {t.user_attrs["requeued_from"]: t.params for t in trials if "requeued_from" in t.user_attrs}
    assert {n: study.trials[n].params for n in running} == requeued  # the running ones were asked again
    assert all(study.trials[n].state.name == "FAIL" for n in running)
    # each trial is told as soon as it is simulated: the kill wastes at most the simulation in progress
    genomes = [tuple(json.loads(x)["genome"]) for x in log.read_text().splitlines()]
    assert len(genomes) - len(set(genomes)) <= 1


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_on_postgresql_share_one_study(tmp_path, postgres_url):
    log = tmp_path / "sims.jsonl"
    problem = synthetic_problem(5, 8)
    open_storage(postgres_url)  # tables created once, as `dse search` does before workers join
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--storage",
        postgres_url,
        "--budget",
        "40",
        "--delay",
        "0.05",
        "--log",
        str(log),
    ]
    procs = [
        subprocess.Popen(cmd + ["--seed", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    sims = [json.loads(x) for x in log.read_text().splitlines()]
    assert len({s["pid"] for s in sims}) == 2  # both workers simulated
    genomes = [tuple(s["genome"]) for s in sims]
    assert len(genomes) == len(set(genomes)) == 40  # none evaluated twice, nothing beyond the budget
    problem = synthetic_problem(5, 8)
    url = postgres_url
    study = create_or_load_study(
        open_storage(url), "synthetic", problem.fingerprint(), {}, make_sampler(8, 0), url
    )
    trials = study.get_trials()
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]  # no trial lost
    assert simulated_count(trials) == 40
    workers = {t.user_attrs.get("worker") for t in trials}
    assert len(workers) == 2
    # the union of both workers' trials forms the front
    pts = completed_points(problem, study)
    assert {p.genome for p in pts} == set(genomes)
    mask = pareto_mask([p.energy_rel for p in pts], [p.accuracy for p in pts])
    by_worker = {}
    for t in trials:
        if t.state.name == "COMPLETE":
            by_worker.setdefault(t.user_attrs["worker"], []).append(t.values)
    hv_union = hypervolume([p.energy_rel for p in pts], [p.accuracy for p in pts])
    assert all(hypervolume([v[0] for v in vs], [v[1] for v in vs]) <= hv_union for vs in by_worker.values())
    assert mask.sum() >= 1
