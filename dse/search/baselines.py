"""Baselines recorded in the same run as the search: the homogeneous assignments (one multiplier
everywhere), the AGN-greedy mappings (one per λ), and random search with the same number of simulations.
All go through the same simulation cache, so a baseline point the search already simulated costs nothing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dse.search.problem import SearchProblem
from dse.search.records import Genome, Origin, SearchPoint, SimulationFailure
from dse.search.simulate import SimulationCache


def simulated_points(
    problem: SearchProblem, cache: SimulationCache, genomes: Sequence[Genome], origins: Sequence[Origin]
) -> list[SearchPoint]:
    accs = cache.evaluate(genomes, "val")
    return [
        problem.point(g, a, origin=o)
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


def random_points(problem: SearchProblem, cache: SimulationCache, n: int, seed: int) -> list[SearchPoint]:
    """n distinct uniformly random assignments (fewer when the space is smaller)."""
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
    return simulated_points(problem, cache, seen, [Origin("random")] * len(seen))
