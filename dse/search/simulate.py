"""Scoring candidates: an evaluator gives the accuracy of a genome on a split; `SimulationCache` makes sure
no genome is simulated twice on a split and orders each batch so that candidates sharing an assignment
prefix run one after another (the simulator's layer-output cache then hits).

`Evaluator` is anything with `accuracy(genome, split) -> float` (split "val" or "test"). The real one,
`ModelSimulator` (in `dse.search.model_sim`), runs the prepared model in `lut` mode; the tests use a cheap
analytic stand-in (`tests/search/synthetic.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from dse.search.records import Genome, SimulationFailure

# what a failing simulation raises (torch / kernel / model errors; MemoryError: a candidate too large):
# recorded as the trial's `error` (SimulationFailure), never swallowed; anything else is a bug and stops
SIMULATION_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, KeyError, ArithmeticError, MemoryError)


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

    def evaluate(self, genomes: Sequence[Genome], split: str = "val") -> list[float | SimulationFailure]:
        """Accuracy of each genome (or the failure its simulation raised), in the order given.
        Unknown genomes are simulated once each, in lexicographic order so that shared prefixes meet."""
        genomes = [tuple(g) for g in genomes]
        todo = sorted({g for g in genomes if (split, g) not in self.values})
        errors: dict[Genome, SimulationFailure] = {}
        for g in todo:
            t0 = time.perf_counter()
            try:
                acc = float(self.evaluator.accuracy(g, split))
                if not np.isfinite(acc):
                    raise ValueError(f"simulation returned accuracy {acc}")
            except SIMULATION_ERRORS as e:  # one failing candidate must not stop the search (recorded)
                errors[g] = SimulationFailure.of(e)
                continue
            finally:
                dt = time.perf_counter() - t0
                self.seconds += dt
                self.simulations[split] += 1
            self.values[(split, g)] = acc
            self.seconds_by_genome[(split, g)] = dt
        return [errors[g] if g in errors else self.values[(split, g)] for g in genomes]
