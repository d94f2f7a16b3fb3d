"""The search problem: approximable layers (forward order), their MACs, and the multipliers allowed in each.

A genome is a tuple of multiplier names, one per layer in `layers` order; `assignment(genome)` is the
`{layer: multiplier}` dict the rest of dse speaks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dse.energy import energy_rel_matrix
from dse.search.records import Genome, Origin, SearchPoint
from dse.util import UserError


@dataclass(frozen=True)
class SearchProblem:
    """Layers, their MACs per sample, the allowed multipliers per layer, and each multiplier's energy_rel."""

    layers: tuple[str, ...]
    macs: tuple[int, ...]
    choices: tuple[tuple[str, ...], ...]
    energies: Mapping[str, float] = field(hash=False)
    exact: str | None = None  # name of the exact multiplier of the study's format, if in the space

    def __post_init__(self) -> None:
        if not self.layers:
            raise UserError("search space: the model has no approximable layers (Conv2d / Linear)")
        if len(self.macs) != len(self.layers) or len(self.choices) != len(self.layers):
            raise ValueError("layers, macs and choices must have one entry per layer")
        for name, ch in zip(self.layers, self.choices):
            if not ch:
                raise UserError(
                    f"search space: no multiplier is allowed for layer {name!r} (empty search space)"
                )
            for m in ch:
                if m not in self.energies:
                    raise ValueError(f"multiplier {m!r} has no energy")

    @classmethod
    def build(
        cls,
        layers: Sequence[str],
        macs: Sequence[int],
        choices: Sequence[Sequence[str]],
        energies: Mapping[str, float],
        exact: str | None = None,
    ) -> SearchProblem:
        return cls(
            tuple(layers),
            tuple(int(m) for m in macs),
            tuple(tuple(c) for c in choices),
            dict(energies),
            exact,
        )

    # --- genomes ---------------------------------------------------------------------------------
    def assignment(self, genome: Sequence[str]) -> dict[str, str]:
        return dict(zip(self.layers, genome))

    def genome(self, assignment: Mapping[str, str]) -> Genome:
        """The genome of an assignment; layers not named are exact (or their most expensive choice)."""
        out = []
        for name, ch in zip(self.layers, self.choices):
            m = assignment.get(name)
            if m is None:
                m = self.exact if self.exact in ch else max(ch, key=lambda c: self.energies[c])
            if m not in ch:
                raise UserError(f"assignment: multiplier {m!r} is not allowed for layer {name!r}")
            out.append(m)
        return tuple(out)

    def to_index(self, genomes: Sequence[Sequence[str]]) -> np.ndarray:
        """[P, L] index of each gene in its layer's choices."""
        pos = [{m: i for i, m in enumerate(ch)} for ch in self.choices]
        return np.array([[pos[j][m] for j, m in enumerate(g)] for g in genomes], dtype=np.int64).reshape(
            len(genomes), len(self.layers)
        )

    def from_index(self, idx: np.ndarray) -> list[Genome]:
        return [tuple(self.choices[j][int(i)] for j, i in enumerate(row)) for row in np.asarray(idx)]

    @property
    def n_choices(self) -> np.ndarray:
        return np.array([len(c) for c in self.choices], dtype=np.int64)

    @property
    def size(self) -> int:
        """Number of distinct assignments."""
        return math.prod(len(c) for c in self.choices)

    def random_genomes(self, rng: np.random.Generator, n: int) -> list[Genome]:
        idx = rng.integers(0, self.n_choices[None, :], size=(n, len(self.layers)))
        return self.from_index(idx)

    # --- energy ----------------------------------------------------------------------------------
    def energy_table(self) -> np.ndarray:
        """[L, max_choices] energy of choice j at layer l (padding: +inf)."""
        t = np.full((len(self.layers), int(self.n_choices.max())), np.inf)
        for j, ch in enumerate(self.choices):
            t[j, : len(ch)] = [self.energies[m] for m in ch]
        return t

    def energy_rel_index(self, idx: np.ndarray) -> np.ndarray:
        """Vectorised energy_rel of a population of index genomes [P, L] -> [P] (`dse.energy`, on the
        flattened energy table: entry l·max_choices + j is choice j of layer l)."""
        t = self.energy_table()
        flat = np.arange(len(self.layers))[None, :] * t.shape[1] + np.asarray(idx)
        return energy_rel_matrix(np.asarray(self.macs), t.reshape(-1), flat)

    def energy_rel(self, genome: Sequence[str]) -> float:
        """energy_rel of one genome (`dse.energy`)."""
        names = sorted(self.energies)
        col = {m: i for i, m in enumerate(names)}
        return float(
            energy_rel_matrix(
                np.asarray(self.macs),
                np.array([self.energies[m] for m in names]),
                np.array([[col[m] for m in genome]]),
            )[0]
        )

    def point(
        self,
        genome: Sequence[str],
        accuracy: float,
        *,
        trial: int | None = None,
        predicted: float | None = None,
        origin: Origin,
        test_accuracy: float | None = None,
    ) -> SearchPoint:
        """The record of a simulated genome (energy from the problem, accuracy as simulated)."""
        return SearchPoint(
            trial=trial,
            energy_rel=self.energy_rel(genome),
            accuracy=float(accuracy),
            test_accuracy=test_accuracy,
            assignment=self.assignment(genome),
            predicted_accuracy=None if predicted is None else float(predicted),
            origin=origin,
        )

    # --- reference assignments -------------------------------------------------------------------
    def homogeneous(self) -> list[Genome]:
        """One genome per multiplier of the space: that multiplier wherever it is allowed, elsewhere the
        allowed choice closest in energy."""
        out: list[Genome] = []
        seen = set()
        for m in sorted({m for ch in self.choices for m in ch}, key=lambda m: (-self.energies[m], m)):
            g = tuple(
                m if m in ch else min(ch, key=lambda c: abs(self.energies[c] - self.energies[m]))
                for ch in self.choices
            )
            if g not in seen:
                seen.add(g)
                out.append(g)
        return out

    def all_exact(self) -> Genome | None:
        if self.exact is None or any(self.exact not in ch for ch in self.choices):
            return None
        return tuple(self.exact for _ in self.layers)

    def fingerprint(self) -> str:
        """sha256 of what defines the problem (layers, MACs, choices, energies)."""
        doc = {
            "layers": list(self.layers),
            "macs": list(self.macs),
            "choices": [list(c) for c in self.choices],
            "energies": {m: round(float(self.energies[m]), 12) for m in sorted(self.energies)},
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
