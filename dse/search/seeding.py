"""What the search simulates: the seeds (all-exact, the AGN mappings, the homogeneous assignments), then,
batch after batch, what pymoo's NSGA-II over the calibrated surrogate proposes (refit on everything
simulated so far): mostly its predicted front (origin "surrogate"), and a share of exploratory picks of
highest expected improvement under the model's bootstrap spread (origin "explore")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from dse.search.records import Genome, Origin
from dse.search.setup import Setup

T = TypeVar("T")
Suggest = Callable[[list[tuple[Genome, float]], int], list[tuple[Genome, Origin]]]
Predict = Callable[[Sequence[Genome]], list[float]]


def first_generation(setup: Setup, population: int, seed: int) -> list[tuple[Genome, Origin]]:
    """The seeds: all-exact, the AGN mappings, the homogeneous assignments (their own origins; the
    surrogate proposes everything after them). `population` and `seed` are kept for the callers."""
    problem = setup.problem
    out: list[tuple[Genome, Origin]] = []
    seen: set[Genome] = set()

    def add(g: Genome | None, origin: Origin) -> None:
        if g is not None and g not in seen:
            seen.add(g)
            out.append((g, origin))

    add(problem.all_exact(), Origin("exact"))
    for g, origin in setup.agn:
        add(g, origin)
    for g in spread(problem.homogeneous()):
        add(g, Origin("homogeneous"))
    return out


def spread(items: Sequence[T]) -> list[T]:
    """Reorder so that every prefix is spread over the list (bisection order): a small budget that cuts
    the seeds still gets homogeneous points across the whole energy range."""
    n = len(items)
    if n <= 2:
        return list(items)
    order = [0, n - 1]
    seen = {0, n - 1}
    step = n - 1
    while len(order) < n:
        step = max(1, step // 2)
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
    return [items[i] for i in order]


def surrogate_callbacks(
    setup: Setup, seeds: Sequence[tuple[Genome, Origin]], seed: int, explore_share: float = 0.25
) -> tuple[Suggest | None, Predict | None]:
    """(suggest, predict) for `run_trials` from the setup's surrogate; (None, None) without one.
    `suggest(complete, n)` proposes the whole batch: round(n · explore_share) exploratory picks, the rest
    from the surrogate's front."""
    sur = setup.surrogate
    if sur is None:
        return None, None
    proposed = {g for g, _ in seeds}
    anchors = [g for g, _ in seeds]

    def suggest(complete: list[tuple[Genome, float]], n: int) -> list[tuple[Genome, Origin]]:
        n_explore = int(round(n * explore_share))
        genomes = sur.suggest(complete, n, exclude=proposed, seeds=anchors, seed=seed, explore=n_explore)
        proposed.update(genomes)
        explored = set(sur.last_explore)
        return [(g, Origin("explore" if g in explored else "surrogate")) for g in genomes]

    def predict(genomes: Sequence[Genome]) -> list[float]:
        return [float(v) for v in sur.predict(genomes)]

    return suggest, predict
