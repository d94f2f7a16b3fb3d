"""Network multiplication energy: Σ_l MACs_l · e(m_l) / Σ_l MACs_l, e relative to the exact multiplier.

Only multiplications count (as in every peer tool); adders, memory and data movement do not.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def mac_shares(macs: Mapping[str, int]) -> dict[str, float]:
    """Each layer's share of the network's multiplications."""
    total = float(sum(macs.values()))
    if total <= 0:
        raise ValueError("the network has no multiplications")
    return {name: m / total for name, m in macs.items()}


def energy_rel(macs: Mapping[str, int], layer_energy: Mapping[str, float]) -> float:
    """Relative energy of an assignment: `layer_energy[name]` is e(m_l) of the layer's multiplier
    (exact = 1.0); layers missing from `layer_energy` count as exact."""
    shares = mac_shares(macs)
    return float(sum(s * layer_energy.get(name, 1.0) for name, s in shares.items()))


def energy_rel_matrix(macs: np.ndarray, energies: np.ndarray, genomes: np.ndarray) -> np.ndarray:
    """Vectorised energy_rel for a population: macs [L], energies [M] (per library index),
    genomes [P, L] of library indices -> [P]."""
    shares = np.asarray(macs, dtype=np.float64) / float(np.sum(macs))
    out: np.ndarray = (np.asarray(energies, dtype=np.float64)[np.asarray(genomes)] * shares[None, :]).sum(
        axis=1
    )
    return out
