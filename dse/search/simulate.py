"""Scoring candidates: an evaluator gives the accuracy of a genome on a split; `SimulationCache` makes sure
no genome is simulated twice on a split and orders each batch so that candidates sharing an assignment
prefix run one after another (the simulator's layer-output cache then hits).

`Evaluator` is anything with `accuracy(genome, split) -> float` (split "val" or "test"). The real one,
`ModelSimulator` (in `dse.search.model_sim`), runs the prepared model in `lut` mode; the tests use a cheap
analytic stand-in (`tests/search/synthetic.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from dse.search.records import Genome, SimulationFailure

# what a failing simulation raises (torch / kernel / model errors; MemoryError: a candidate too large):
# recorded as the trial's `error` (SimulationFailure), never swallowed; anything else is a bug and stops
SIMULATION_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, KeyError, ArithmeticError, MemoryError)


class Evaluator(Protocol):
    def accuracy(self, genome: Genome, split: str = "val") -> float: ...


@runtime_checkable
class SlicedEvaluator(Protocol):
    """An evaluator that can score a slice of a split (rows [start, stop)): what early rejection needs."""

    def accuracy(self, genome: Genome, split: str = "val") -> float: ...

    def size(self, split: str = "val") -> int: ...

    def correct(self, genome: Genome, split: str = "val", start: int = 0, stop: int | None = None) -> int: ...


@dataclass(frozen=True)
class Staged:
    """A candidate scored with early rejection: its accuracy on the `images` first validation images
    (all of them when `complete`; a rejected candidate stopped after a first slice)."""

    accuracy: float
    images: int
    complete: bool


def slice_plan(n: int, first: int = 64, stages: int = 4) -> list[int]:
    """Image counts after which a candidate is checked: a first slice of n / 2^(stages-1) images (at
    least `first`), doubling up to n (the last entry is n). No look after more than 3/4 of the split:
    it would cost almost a whole simulation and leave the candidate partial (700 images: a look at 696
    made 89 of digits' 181 early rejections)."""
    sizes = []
    k = max(first, n >> (stages - 1))
    while 4 * k <= 3 * n:
        sizes.append(k)
        k *= 2
    return sizes + [n]


def accuracy_upper_bound(correct: int, seen: int, total: int, alpha: float) -> float:
    """One-sided (1 − alpha) upper bound on the accuracy over all `total` images, given `correct` of the
    first `seen` (Clopper–Pearson bound on the rest's accuracy; the seen images count as they are)."""
    from scipy.stats import beta

    if seen >= total:
        return correct / max(1, total)
    p_hi = 1.0 if correct >= seen else float(beta.ppf(1.0 - alpha, correct + 1, seen - correct))
    return (correct + (total - seen) * p_hi) / total


# early rejection's looks (`slice_plan`), the same for the search and the random baseline: a first slice of
# 64 validation images, doubling up to the whole split (2,000 images: 64, 128, ..., 1,024, 2,000)
REJECT_FIRST, REJECT_STAGES = 64, 6


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
        self.images = {"val": 0, "test": 0}  # images simulated (a full candidate: the split's size)
        self.partial: dict[Genome, tuple[int, int]] = {}  # rejected early: (correct, images) on val

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
        ev = self.evaluator
        for g in todo:
            t0 = time.perf_counter()
            try:
                if isinstance(ev, SlicedEvaluator) and split == "val" and g in self.partial:
                    c, k = self.partial[g]  # finish a candidate rejected early
                    n = ev.size(split)
                    acc = (c + ev.correct(g, split, k, n)) / max(1, n)
                    self.images[split] += n - k
                    del self.partial[g]
                else:
                    acc = float(ev.accuracy(g, split))
                    self.images[split] += ev.size(split) if isinstance(ev, SlicedEvaluator) else 1
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

    def evaluate_staged(
        self,
        genomes: Sequence[Genome],
        threshold: Callable[[Genome], float],
        confidence: float,
        first_images: int = REJECT_FIRST,
        stages: int = REJECT_STAGES,
    ) -> list[Staged | SimulationFailure]:
        """Validation accuracy with early rejection: each unknown genome is simulated on a first slice,
        then on doubling slices; after each slice it stops when the (1 − α) upper bound of its full-split
        accuracy lies below `threshold(genome)` (the current front's accuracy at its energy), α = (1 −
        `confidence`) / the number of checks. A candidate that may reach the threshold is finished on the
        whole split, so anything that could enter the front is never partial. `threshold` is called just
        before each check (it sees the candidates finished before). Without a slicing evaluator: `evaluate`.
        """
        genomes = [tuple(g) for g in genomes]
        ev = self.evaluator
        if not isinstance(ev, SlicedEvaluator):
            full = self.evaluate(genomes, "val")
            return [r if isinstance(r, SimulationFailure) else Staged(r, 1, True) for r in full]
        n = ev.size("val")
        plan = slice_plan(n, first_images, stages)
        alpha = (1.0 - confidence) / max(1, len(plan) - 1)
        out: dict[Genome, Staged | SimulationFailure] = {}
        for g in sorted(set(genomes)):
            if ("val", g) in self.values:
                out[g] = Staged(self.values[("val", g)], n, True)
                continue
            c, k = self.partial.get(g, (0, 0))
            t0 = time.perf_counter()
            try:
                for stop in plan:
                    if stop <= k:
                        continue
                    c += ev.correct(g, "val", k, stop)
                    self.images["val"] += stop - k
                    k = stop
                    if k < n and accuracy_upper_bound(c, k, n, alpha) < threshold(g):
                        break
            except SIMULATION_ERRORS as e:  # one failing candidate must not stop the search (recorded)
                out[g] = SimulationFailure.of(e)
                continue
            finally:
                dt = time.perf_counter() - t0
                self.seconds += dt
                self.simulations["val"] += 1
                self.seconds_by_genome[("val", g)] = dt
            if k >= n:
                self.values[("val", g)] = c / max(1, n)
                self.partial.pop(g, None)
                out[g] = Staged(c / max(1, n), n, True)
            else:
                self.partial[g] = (c, k)
                out[g] = Staged(c / k, k, False)
        return [out[g] for g in genomes]


def front_threshold_over(
    energy_rel: Callable[[Genome], float], complete: Callable[[], Iterable[tuple[float, float]]]
) -> Callable[[Genome], float]:
    """threshold(genome) for early rejection: the best accuracy among the (energy_rel, accuracy) pairs of
    the complete points that `complete()` gives when called, at an energy at most the genome's (0 where
    there is none): the front a candidate must reach to enter it."""

    def threshold(g: Genome) -> float:
        e = energy_rel(g)
        return max((a for energy, a in complete() if energy <= e + 1e-12), default=0.0)

    return threshold


def val_images(cache: SimulationCache) -> int | None:
    """Size of the validation split when the evaluator simulates slices (else None: whole candidates)."""
    ev = cache.evaluator
    return ev.size("val") if isinstance(ev, SlicedEvaluator) else None
