"""Scoring candidates: an evaluator gives the accuracy of a genome on a split; `SimulationCache` makes sure
no genome is simulated twice on a split and orders each batch so that candidates sharing an assignment
prefix run one after another (the simulator's layer-output cache then hits).

`Evaluator` is anything with `accuracy(genome, split) -> float` (split "val" or "test"). The real one,
`ModelSimulator` (in `dse.search.model_sim`), runs the prepared model in `lut` mode; `SyntheticEvaluator`
is a cheap analytic stand-in for tests and engine benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from dse.search.problem import Genome, SearchProblem


class Evaluator(Protocol):
    def accuracy(self, genome: Genome, split: str = "val") -> float: ...


class SimulationCache:
    """Accuracy per (split, genome), simulated at most once; counts simulations and the time they took.

    The key is the genome itself (the multiplier name per layer, in layer order): MARLIN's cache keyed
    on something else and never hit."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.values: dict[tuple[str, Genome], float] = {}
        self.simulations = {"val": 0, "test": 0}
        self.seconds = 0.0
        self.seconds_by_genome: dict[tuple[str, Genome], float] = {}

    def known(self, genome: Genome, split: str = "val") -> float | None:
        return self.values.get((split, tuple(genome)))

    def add(self, genome: Genome, accuracy: float, split: str = "val") -> None:
        """Record a value simulated elsewhere (another worker, an earlier run)."""
        self.values[(split, tuple(genome))] = float(accuracy)

    def evaluate(self, genomes: Sequence[Genome], split: str = "val") -> list[float | BaseException]:
        """Accuracy of each genome (or the exception its simulation raised), in the order given.
        Unknown genomes are simulated once each, in lexicographic order so that shared prefixes meet."""
        genomes = [tuple(g) for g in genomes]
        todo = sorted({g for g in genomes if (split, g) not in self.values})
        errors: dict[Genome, BaseException] = {}
        for g in todo:
            t0 = time.perf_counter()
            try:
                acc = float(self.evaluator.accuracy(g, split))
                if not np.isfinite(acc):
                    raise ValueError(f"simulation returned accuracy {acc}")
            except Exception as e:  # one failing candidate must not stop the search
                errors[g] = e
                continue
            finally:
                dt = time.perf_counter() - t0
                self.seconds += dt
                self.simulations[split] += 1
            self.values[(split, g)] = acc
            self.seconds_by_genome[(split, g)] = dt
        return [errors[g] if g in errors else self.values[(split, g)] for g in genomes]


class SyntheticEvaluator:
    """Accuracy falls smoothly with each layer's relative error: a deterministic stand-in for the simulator
    (no model, microseconds per call). Layer sensitivity and each multiplier's error grow with
    1 - energy, so the problem has a real trade-off and a known structure."""

    def __init__(
        self, problem: SearchProblem, base_accuracy: float = 0.95, seed: int = 0, delay_s: float = 0.0
    ):
        rng = np.random.default_rng(seed)
        self.problem = problem
        self.base = base_accuracy
        self.sensitivity = rng.uniform(0.2, 3.0, size=len(problem.layers))
        self.delay_s = delay_s
        self.calls: list[tuple[Genome, str]] = []

    def error(self, genome: Genome) -> float:
        e = np.array([self.problem.energies[m] for m in genome])
        return float(np.sum(self.sensitivity * (1.0 - e) ** 3))

    def accuracy(self, genome: Genome, split: str = "val") -> float:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.calls.append((tuple(genome), split))
        drop = 1.0 - np.exp(-self.error(genome))
        shift = 0.002 if split == "test" else 0.0
        return float(max(0.1, self.base - 0.85 * drop - shift))


def synthetic_problem(n_layers: int = 4, n_multipliers: int = 8) -> SearchProblem:
    """A small problem for tests: layers with decreasing MACs, multipliers exact + evenly cheaper ones."""
    names = ["exact"] + [f"m{i}" for i in range(1, n_multipliers)]
    energies = {
        "exact": 1.0,
        **{f"m{i}": 1.0 - 0.8 * i / (n_multipliers - 1) for i in range(1, n_multipliers)},
    }
    layers = [f"layer{i}" for i in range(n_layers)]
    macs = [1000 * (n_layers - i) for i in range(n_layers)]
    return SearchProblem.build(layers, macs, [names] * n_layers, energies, exact="exact")
