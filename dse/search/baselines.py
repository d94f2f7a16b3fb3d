"""Baselines recorded in the same run as the search: the homogeneous assignments (one multiplier
everywhere), the AGN-greedy mappings (one per λ), and random search with the same budget. All go through
the same simulation cache, so a baseline point the search already simulated costs no new simulation.

Random search plays by the search's rules: each candidate is simulated with the same early rejection
(`SimulationCache.evaluate_staged`, against the random search's *own* front so far, never the search's),
and it stops when it has spent the search's budget in full-split simulations (a candidate rejected after
k of n images costs k/n, one answered from the cache costs what it would have cost alone). Its points
carry `images` and `partial`, so the summary says what it simulated (`baseline_images`).

The test split re-measures what a user would pick from: `front_genomes` gives each strategy's validation
front (complete points only), the same rule as for the search's own points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from dse.search.pareto import pareto_mask
from dse.search.problem import SearchProblem
from dse.search.records import Genome, Origin, SearchPoint, SimulationFailure
from dse.search.simulate import REJECT_FIRST, SimulationCache, Staged, front_threshold_over, val_images
from dse.util import progress


def simulated_points(
    problem: SearchProblem, cache: SimulationCache, genomes: Sequence[Genome], origins: Sequence[Origin]
) -> list[SearchPoint]:
    """Complete validation points of these genomes (simulated where the cache does not know them)."""
    accs = cache.evaluate(genomes, "val")
    n = val_images(cache)
    return [
        dataclasses.replace(problem.point(g, a, origin=o), images=n)
        for g, a, o in zip(genomes, accs, origins)
        if not isinstance(a, SimulationFailure)
    ]


def homogeneous_points(problem: SearchProblem, cache: SimulationCache) -> list[SearchPoint]:
    genomes = problem.homogeneous()
    return simulated_points(problem, cache, genomes, [Origin("homogeneous")] * len(genomes))


def agn_points(
    problem: SearchProblem, cache: SimulationCache, agn: Sequence[tuple[Genome, Origin]]
) -> list[SearchPoint]:
    return simulated_points(problem, cache, [g for g, _ in agn], [o for _, o in agn])


def random_genomes(problem: SearchProblem, n: int, seed: int) -> list[Genome]:
    """n distinct uniformly random assignments (fewer when the space is smaller), in drawing order."""
    rng = np.random.default_rng(seed + 7919)
    seen: list[Genome] = []
    have = set()
    tries = 0
    while len(seen) < min(n, problem.size) and tries < 100 * max(1, n):
        for g in problem.random_genomes(rng, n):
            tries += 1
            if g not in have:
                have.add(g)
                seen.append(g)
                if len(seen) >= n:
                    break
    return seen


def random_points(
    problem: SearchProblem,
    cache: SimulationCache,
    budget: float,
    seed: int,
    confidence: float | None = None,
) -> list[SearchPoint]:
    """Random search with `budget` full validation simulations. With `confidence` (and a slicing
    evaluator) every candidate goes through the search's early rejection against the random search's own
    front, and candidates are drawn until the budget is spent (k/n per candidate rejected after k of n
    images); without, `budget` complete random candidates."""
    n_val = val_images(cache)
    if confidence is None or n_val is None:
        genomes = random_genomes(problem, int(budget), seed)
        return simulated_points(problem, cache, genomes, [Origin("random")] * len(genomes))
    # a candidate rejected at the first look costs REJECT_FIRST / n_val of a simulation: enough for all
    pool = random_genomes(problem, max(1, int(budget)) * (n_val // REJECT_FIRST + 1), seed)
    out: list[SearchPoint] = []
    spent = 0.0
    total = int(np.ceil(budget * n_val))
    with progress(total=total, desc="baseline random search (validation images)", unit="img") as bar:
        for g in pool:
            if spent >= budget - 1e-9:
                break
            r = cache.evaluate_staged([g], _own_front(problem, out), confidence)[0]
            if isinstance(r, SimulationFailure):
                continue
            assert isinstance(r, Staged)
            out.append(
                dataclasses.replace(
                    problem.point(g, r.accuracy, origin=Origin("random")),
                    images=r.images,
                    partial=not r.complete,
                )
            )
            cost = min(1.0, r.images / n_val)
            spent += cost
            bar.update(min(r.images, n_val))
    return out


def _own_front(problem: SearchProblem, points: Sequence[SearchPoint]) -> Callable[[Genome], float]:
    """threshold(genome): the best complete accuracy among `points` at an energy at most the genome's."""
    return front_threshold_over(
        problem.energy_rel,
        lambda: ((p.energy_rel, p.accuracy) for p in points if not p.partial and p.accuracy is not None),
    )


def front_genomes(points: Sequence[SearchPoint]) -> list[Genome]:
    """Genomes of the validation front of the complete points (energy down, accuracy up)."""
    full = [p for p in points if not p.partial and p.accuracy is not None]
    if not full:
        return []
    mask = pareto_mask(np.array([p.energy_rel for p in full]), np.array([p.accuracy for p in full]))
    return [p.genome for p, keep in zip(full, mask) if keep]


def baseline_images(points: Sequence[SearchPoint]) -> int | None:
    """Validation images a baseline's points cost (None when a point does not say)."""
    images = [p.images for p in points]
    return None if any(i is None for i in images) else int(sum(i for i in images if i is not None))


def test_accuracies(
    cache: SimulationCache, genomes: Sequence[Genome]
) -> dict[Genome, float | SimulationFailure]:
    """Test-split accuracy of each distinct genome, in lexicographic order (shared prefixes meet), with a
    progress bar: the re-measurement of every front."""
    todo = sorted(set(genomes))
    out: dict[Genome, float | SimulationFailure] = {}
    for g in progress(todo, desc="test re-measurement of the fronts"):
        out[g] = cache.evaluate([g], "test")[0]
    return out
