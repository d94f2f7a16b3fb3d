"""The catalogue of built-in multipliers: one typed spec per unsigned multiplier, and the unsigned cores
that also get a signed variant. Nothing is computed here; `dse.multipliers.builtin` builds the tables.

Families (8-bit, a = activation = first table index, b = weight = second index):

- `exact_u8`, `exact_s8`: exact unsigned / signed products (energy_rel 1.0 by definition).
- `bam_h{h}_v{v}_u8`: broken-array multiplier BAM(h, v): partial-product rows j < h (bits of b) and cells
  with i + j < v are dropped, the rest is added exactly. Gate-level circuit from `ariths-gen`.
- `trunc{k}_u8`: column truncation = BAM(0, k) (the k lowest product columns are not built).
- `optrunc{t}_u8`: operand truncation, keeps a_i·b_j only for i >= t and j >= t (ariths-gen
  `UnsignedTruncatedArrayMultiplier`).
- `rec2x2_m{v}_w{t}_u8`: recursive 8x8 multiplier from sixteen 2x2 blocks (Kulkarni); the blocks whose
  operand bit offsets i + j <= t use the approximate 2x2 block M{v} of ariths-gen (M1: 3·3 = 7,
  M2, M3, M4 as in IEEE 8727537), the others are exact. Circuit from `ariths-gen`.
- `perf_r{s}_k{k}_u8`: partial-product perforation, rows s .. s+k-1 (bits of b) are skipped.
- `drum{k}_u8`: DRUM-k: per operand keep k bits from the leading one, force the kept LSB to 1, multiply,
  shift back (operands below 2^k are exact). Unbiased; the table has rank 1.
- `mitchell_u8`: Mitchell's logarithmic multiplier with an exact integer datapath (never above exact,
  max relative error 1/9 ≈ 11.1 %, 0 if an operand is 0).
- `roba_u8`: rounding-based: A·B ≈ Ar·B + Br·A − Ar·Br, Ar = nearest power of two (ties round up).
- `etm{k}_u8`: error-tolerant multiplier split at bit k: if both high parts are zero, the low parts are
  multiplied exactly; otherwise (a_hi·b_hi) << 2k plus a non-multiplication field: with v = a_lo | b_lo,
  all bits of v from its leading one down are set to 1 and the field is placed at bit k.
- Signed `*_s8`: sign-magnitude wrappers around an unsigned core: s(a, b) = sign(a)·sign(b)·core(|a|, |b|).
  |−128| = 128 still fits the 8-bit unsigned core, so −128 is handled exactly by an exact core (the wrapper
  needs no saturation); with an approximate core, −128 behaves like the magnitude 128 through that core.

The energy of each family is `dse.multipliers.energy_model`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TypeAlias

import numpy as np

from dse.multipliers import circuits, energy_model, formulas
from dse.multipliers.circuits import Circuit

Build: TypeAlias = Callable[[], tuple[np.ndarray, float]]  # -> (table, energy_rel)


@dataclass(frozen=True, eq=False)
class BuiltinSpec:
    """One unsigned built-in multiplier: name, family and parameters, and how to compute it.

    `build()` -> (table int32 [256, 256], energy_rel). Building all of them takes seconds (the circuits are
    evaluated gate by gate), which is why `dse.multipliers.builtin` caches the results on disk."""

    name: str
    family: str
    params: Mapping[str, int | str]  # the family's parameters, without "family"
    build: Build
    energy_method: str

    @property
    def multiplier_params(self) -> dict[str, int | str]:
        """`Multiplier.params`: the family first, then its parameters."""
        return {"family": self.family, **self.params}


def _circuit(make: Callable[[], Circuit], reference_cost: Callable[[], float]) -> Build:
    """Table and gate-count energy of one ariths-gen circuit (built once for both)."""

    def build() -> tuple[np.ndarray, float]:
        c = make()
        return circuits.circuit_table(c), energy_model.gate_cost(c) / reference_cost()

    return build


def _formula(table: Callable[[], np.ndarray], energy_rel: Callable[[], float]) -> Build:
    return lambda: (table(), energy_rel())


def _unsigned_specs() -> tuple[BuiltinSpec, ...]:
    array, model = energy_model.GATES_ARRAY, energy_model.MODEL

    def in_array(make: Callable[[], Circuit]) -> Build:
        return _circuit(make, energy_model.exact_array_cost)

    specs = [BuiltinSpec("exact_u8", "exact", {}, in_array(circuits.array_multiplier), array)]
    for k in (2, 3, 4, 5, 6, 7, 8, 9, 10):
        specs.append(
            BuiltinSpec(
                f"trunc{k}_u8", "trunc", {"k": k}, in_array(partial(circuits.broken_array, 0, k)), array
            )
        )
    for h, v in (
        (1, 4),
        (2, 4),
        (3, 5),
        (1, 6),
        (2, 6),
        (4, 6),
        (2, 8),
        (3, 7),
        (3, 9),
        (4, 8),
        (4, 9),
        (4, 10),
        (5, 9),
        (5, 10),
        (3, 11),
        (5, 11),
        (6, 11),
        (6, 12),
    ):
        build = in_array(partial(circuits.broken_array, h, v))
        specs.append(BuiltinSpec(f"bam_h{h}_v{v}_u8", "bam", {"h": h, "v": v}, build, array))
    for t in (1, 2, 3, 4, 5):
        build = in_array(partial(circuits.operand_truncated, t))
        specs.append(BuiltinSpec(f"optrunc{t}_u8", "optrunc", {"t": t}, build, array))
    for v, t in ((4, 2), (1, 2), (1, 4), (3, 4), (4, 4), (1, 6), (2, 6), (4, 6), (1, 8)):
        build = in_array(partial(circuits.recursive, v, t))
        params: dict[str, int | str] = {"block": f"M{v}", "max_weight": t}
        specs.append(
            BuiltinSpec(f"rec2x2_m{v}_w{t}_u8", "recursive2x2", params, build, energy_model.GATES_RECURSIVE)
        )
    for s, k in ((0, 1), (0, 2), (1, 2), (0, 3), (2, 2), (1, 3)):
        build = _formula(
            partial(formulas.perforated_table, s, k), partial(energy_model.perforation_energy_rel, k)
        )
        params = {"start_row": s, "rows": k}
        specs.append(
            BuiltinSpec(
                f"perf_r{s}_k{k}_u8", "perforation", params, build, energy_model.perforation_method(k)
            )
        )
    for k in (3, 4, 5, 6):
        build = _formula(partial(formulas.drum_table, k), partial(energy_model.drum_energy_rel, k))
        specs.append(BuiltinSpec(f"drum{k}_u8", "drum", {"k": k}, build, model))
    build = _formula(formulas.mitchell_table, energy_model.mitchell_energy_rel)
    specs.append(BuiltinSpec("mitchell_u8", "mitchell", {}, build, model))
    specs.append(
        BuiltinSpec("roba_u8", "roba", {}, _formula(formulas.roba_table, energy_model.roba_energy_rel), model)
    )
    for k in (2, 3, 4):
        build = _formula(partial(formulas.etm_table, k), partial(energy_model.etm_energy_rel, k))
        specs.append(BuiltinSpec(f"etm{k}_u8", "etm", {"k": k}, build, model))
    return tuple(specs)


# every unsigned built-in, exact_u8 first (library order)
UNSIGNED_SPECS = _unsigned_specs()

# unsigned cores that also get a sign-magnitude signed variant `<core without _u8>_s8` (library order)
SIGNED_CORES = (
    "rec2x2_m1_w2_u8",
    "trunc5_u8",
    "trunc6_u8",
    "trunc7_u8",
    "trunc8_u8",
    "trunc9_u8",
    "trunc10_u8",
    "bam_h2_v4_u8",
    "bam_h2_v6_u8",
    "bam_h3_v7_u8",
    "bam_h3_v9_u8",
    "bam_h4_v8_u8",
    "bam_h5_v9_u8",
    "bam_h5_v11_u8",
    "bam_h6_v11_u8",
    "bam_h6_v12_u8",
    "optrunc2_u8",
    "rec2x2_m1_w4_u8",
    "rec2x2_m4_w6_u8",
    "perf_r0_k2_u8",
    "perf_r1_k2_u8",
    "drum4_u8",
    "drum5_u8",
    "drum6_u8",
    "mitchell_u8",
    "roba_u8",
    "etm3_u8",
)
