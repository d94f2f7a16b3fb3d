"""Test helpers of the search: a small synthetic problem and a cheap analytic evaluator (no model).
No tests here: helpers only (imported by name)."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from dse.search.problem import SearchProblem
from dse.search.records import Genome


class SyntheticEvaluator:
    """Accuracy falls smoothly with each layer's relative error: a deterministic stand-in for the simulator
    (no model, microseconds per call). Layer sensitivity and each multiplier's error grow with
    1 - energy, so the problem has a real trade-off and a known structure."""

    def __init__(
        self, problem: SearchProblem, base_accuracy: float = 0.95, seed: int = 0, delay_s: float = 0.0
    ) -> None:
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


class SlicedSyntheticEvaluator(SyntheticEvaluator):
    """The synthetic accuracy as a split of `n` images: image i of a genome is correct with the genome's
    accuracy as probability (a fixed draw per genome), so slices of the split can be scored
    (`correct`, what early rejection needs) and agree with `accuracy` on the whole split."""

    def __init__(self, problem: SearchProblem, n: int = 400, **kwargs: object) -> None:
        super().__init__(problem, **kwargs)  # type: ignore[arg-type]
        self.n = n
        self.slices: list[tuple[Genome, int, int]] = []

    def size(self, split: str = "val") -> int:
        return self.n

    def outcomes(self, genome: Genome, split: str = "val") -> np.ndarray:
        p = super().accuracy(genome, split)
        self.calls.pop()
        seed = int(hashlib.sha256(repr((tuple(genome), split)).encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).random(self.n) < p

    def correct(self, genome: Genome, split: str = "val", start: int = 0, stop: int | None = None) -> int:
        stop = self.n if stop is None else stop
        self.slices.append((tuple(genome), start, stop))
        return int(self.outcomes(genome, split)[start:stop].sum())

    def accuracy(self, genome: Genome, split: str = "val") -> float:
        self.calls.append((tuple(genome), split))
        return float(self.outcomes(genome, split).mean())


# the search space of the end-to-end and bad-input tests: the exact product, 5 truncations, 2 DRUMs
TINY_SPACE = """
name = "tiny"
format = "unsigned"
weight_scheme = "sign-magnitude"
multipliers = ["exact_u8", "trunc[2-6]_u8", "drum4_u8", "drum5_u8"]
"""
