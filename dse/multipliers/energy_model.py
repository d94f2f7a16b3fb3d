"""The energy model of the built-in multipliers: a per-gate cost table and one energy method per family.

`energy_rel` is relative to the exact multiplier of the same format; each method has an `energy_method`
string that names it:

- `gates:*`: gate-weighted count of the ariths-gen circuit, divided by that of the exact reference circuit.
  Per-gate cost = the cell area of the NanGate 45 nm Open Cell Library X1 cells (area is the usual
  first-order proxy of switched capacitance, hence dynamic power), normalised to AND2_X1 = 1.064 µm²:

  ==========  ==========  =====
  gate        cell        cost
  ==========  ==========  =====
  NOT         INV_X1      0.5
  NAND, NOR   NAND2_X1    0.75
  AND, OR     AND2_X1     1.0
  XOR, XNOR   XOR2_X1     1.5
  ==========  ==========  =====

  The reference of every unsigned design is the one exact multiplier of the format: the exact ariths-gen
  unsigned array multiplier (372 units, `exact_u8` = 1.0). The recursive 2x2 family is costed against it
  too: its recursive adder tree is part of its cost (an all-exact recursive multiplier costs 852.5 units,
  2.29x), so every `rec2x2_*` design costs more than `exact_u8` and is marked dominated.
- `gates:array8x(8-k)`: perforation removes k partial-product rows, leaving an 8x(8-k) array: its
  ariths-gen gate cost over the exact 8x8 array.
- `model:*` (DRUM, Mitchell, RoBA, ETM): a documented gate model — the core arithmetic blocks (small array
  multipliers, ripple adders) counted from ariths-gen circuits with the table above, the steering logic by
  the formulas in the `*_energy_rel` functions (leading-one detector 8-bit: 12 units; 2:1 mux: 1.75 units =
  NanGate45 MUX2_X1; barrel shifter n bits × s stages: n·s muxes). These are estimates, not synthesis results.
- Signed variants: energy_rel_s = (E_core + E_sm) / (E_exact_core + E_sm), E_sm = the sign-magnitude
  wrapper (two 8-bit two's-complement negators, 2 × 32 units, a 16-bit output negator, 64 units, and a
  sign XOR) = 129.5 units. I.e. the signed variant is compared with an exact multiplier built the same
  way; the wrapper dilutes the core's saving (conservative).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from dse.multipliers.circuits import Circuit, array_multiplier, recursive, ripple_carry_adder

GATE_COST = {
    "NotGate": 0.5,
    "NandGate": 0.75,
    "NorGate": 0.75,
    "AndGate": 1.0,
    "OrGate": 1.0,
    "XorGate": 1.5,
    "XnorGate": 1.5,
}
MUX2 = 1.75  # NanGate45 MUX2_X1, 1.862 um^2 / 1.064
LOD8 = 12.0  # 8-bit leading-one detector (one-hot): 7 AND + 7 NOT + a few ORs, rounded
SIGN_MAGNITUDE_OVERHEAD = 2 * 32.0 + 64.0 + 1.5

EXACT_ARRAY = "exact ariths-gen 8x8 unsigned array"
GATES_ARRAY = f"gates:ariths-gen circuit / {EXACT_ARRAY} (NanGate45 X1 area weights)"
GATES_RECURSIVE = f"gates:ariths-gen recursive 2x2 circuit / {EXACT_ARRAY} (NanGate45 X1 area weights)"
MODEL = "model:gate model (ariths-gen blocks + LOD/mux formulas) / " + EXACT_ARRAY


def gate_cost(circuit: Circuit) -> float:
    """Gate-weighted cost of an ariths-gen circuit (GATE_COST per gate)."""
    total = 0.0
    for g in circuit.get_circuit_gates():
        kind = type(g).__name__
        if kind not in GATE_COST:
            raise ValueError(f"no cost for gate {kind}")
        total += GATE_COST[kind]
    return total


@cache
def array_cost(n_a: int, n_b: int) -> float:
    """Gate cost of the exact n_a x n_b array multiplier (0 when a side is empty)."""
    return gate_cost(array_multiplier(n_a, n_b)) if n_a > 0 and n_b > 0 else 0.0


def exact_array_cost() -> float:
    """The reference of the array-based families and of the `model:*` methods."""
    return array_cost(8, 8)


@cache
def exact_recursive_cost() -> float:
    """The all-exact recursive multiplier (same adder tree as the `rec2x2_*` designs); not a reference."""
    return gate_cost(recursive(None, -1))


def _ripple_adder_cost(n: int) -> float:
    return gate_cost(ripple_carry_adder(n))


def perforation_energy_rel(rows: int) -> float:
    """`gates:array8x(8-rows)`: the 8x(8-rows) array that remains, over the exact 8x8 array."""
    return array_cost(8, 8 - rows) / exact_array_cost()


def perforation_method(rows: int) -> str:
    return f"gates:array8x{8 - rows} / {EXACT_ARRAY}"


def drum_energy_rel(k: int) -> float:
    per_operand = LOD8 + 3 * k * MUX2  # leading-one detector + 8->k operand steering (3 stages)
    stages = int(np.ceil(np.log2(2 * (8 - k) + 1)))  # shift back by 0 .. 2(8-k)
    out_shift = 16 * stages * MUX2
    return (2 * per_operand + array_cost(k, k) + out_shift) / exact_array_cost()


def mitchell_energy_rel() -> float:
    per_operand = LOD8 + 3 * 7 * MUX2  # characteristic + 7-bit normalised mantissa
    # log add, antilog shift
    return (2 * per_operand + _ripple_adder_cost(10) + 16 * 4 * MUX2) / exact_array_cost()


def roba_energy_rel() -> float:
    per_operand = LOD8 + 8.0  # nearest power of two: leading one + rounding decision
    shifters = 2 * 16 * 4 * MUX2  # Ar·B and Br·A are shifts of B and A by 0..8
    # add, subtract the one-hot Ar·Br
    return (2 * per_operand + shifters + 2 * _ripple_adder_cost(16)) / exact_array_cost()


def etm_energy_rel(k: int) -> float:
    hi, lo = array_cost(8 - k, 8 - k), array_cost(k, k)
    zero_detect = 2 * (8 - k - 1) + 1.0
    field = 2 * k + 1.0 * k  # OR of the low bits, fill chain (OR prefix)
    return (hi + lo + zero_detect + field + 2 * k * MUX2) / exact_array_cost()


def signed_energy(core_energy_rel: float) -> float:
    """Signed energy_rel from the unsigned core's (see the module docstring)."""
    e_core = core_energy_rel * exact_array_cost()
    return (e_core + SIGN_MAGNITUDE_OVERHEAD) / (exact_array_cost() + SIGN_MAGNITUDE_OVERHEAD)
