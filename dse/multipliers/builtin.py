"""The built-in multiplier library, generated in code (no table files are shipped).

Families (8-bit, a = activation = first table index, b = weight = second index; ANCHORS.md §4):

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

Energy (`energy_rel`, relative to the exact multiplier of the same format; `energy_method` names the method):

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

  The reference is the exact ariths-gen unsigned array multiplier (372 units) for array-based circuits
  (BAM, truncation, perforation) and the exact recursive multiplier with the same adder tree for the
  recursive family (so that an all-exact recursive multiplier is 1.0, as its architecture demands).
- `gates:array8x(8-k)`: perforation removes k partial-product rows, leaving an 8x(8-k) array: its
  ariths-gen gate cost over the exact 8x8 array.
- `model:*` (DRUM, Mitchell, RoBA, ETM): a documented gate model — the core arithmetic blocks (small array
  multipliers, ripple adders) counted from ariths-gen circuits with the table above, the steering logic by
  the formulas in the `_*_energy` functions (leading-one detector 8-bit: 12 units; 2:1 mux: 1.75 units =
  NanGate45 MUX2_X1; barrel shifter n bits × s stages: n·s muxes). These are estimates, not synthesis results.
- Signed variants: energy_rel_s = (E_core + E_sm) / (E_exact_core + E_sm), E_sm = the sign-magnitude
  wrapper (two 8-bit two's-complement negators, 2 × 32 units, a 16-bit output negator, 64 units, and a
  sign XOR) = 129.5 units. I.e. the signed variant is compared with an exact multiplier built the same
  way; the wrapper dilutes the core's saving (conservative).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache, lru_cache
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from dse.multipliers.core import Multiplier, exact_table, operand_values

# Bump when any family definition, parameter list or cost table changes: it keys the on-disk cache.
BUILTIN_VERSION = "4"

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

_A = np.repeat(np.arange(256, dtype=np.uint16), 256)  # first operand (activation), row index
_B = np.tile(np.arange(256, dtype=np.uint16), 256)  # second operand (weight), column index


# ---------------------------------------------------------------- ariths-gen circuits ------------------
def _bus(name: str, n: int):
    from ariths_gen.wire_components import Bus

    return Bus(name, n)


def gate_cost(circuit) -> float:
    """Gate-weighted cost of an ariths-gen circuit (GATE_COST per gate)."""
    total = 0.0
    for g in circuit.get_circuit_gates():
        kind = type(g).__name__
        if kind not in GATE_COST:
            raise ValueError(f"no cost for gate {kind}")
        total += GATE_COST[kind]
    return total


def circuit_table(circuit) -> np.ndarray:
    """Evaluate an 8x8 ariths-gen circuit on all 65,536 operand pairs at once -> int32 [256, 256]."""
    buf = StringIO()
    circuit.get_python_code_flat(buf)
    scope: dict[str, Any] = {}
    exec(buf.getvalue(), scope)  # noqa: S102 - code generated by ariths-gen from our own circuit
    out = scope[circuit.prefix](_A, _B)
    return np.asarray(out, dtype=np.int64).reshape(256, 256).astype(np.int32)


def _array(n_a: int = 8, n_b: int = 8):
    from ariths_gen.multi_bit_circuits.multipliers import UnsignedArrayMultiplier

    return UnsignedArrayMultiplier(_bus("a", n_a), _bus("b", n_b))


def _bam(h: int, v: int):
    from ariths_gen.multi_bit_circuits.approximate_multipliers import UnsignedBrokenArrayMultiplier

    return UnsignedBrokenArrayMultiplier(_bus("a", 8), _bus("b", 8), horizontal_cut=h, vertical_cut=v)


def _optrunc(t: int):
    from ariths_gen.multi_bit_circuits.approximate_multipliers import UnsignedTruncatedArrayMultiplier

    return UnsignedTruncatedArrayMultiplier(_bus("a", 8), _bus("b", 8), truncation_cut=t)


def _block_offsets() -> list[tuple[int, int]]:
    """LSB bit offsets (i of a, j of b) of the 16 two-bit blocks, in ariths-gen's submultiplier order."""
    out = []
    for m in range(16):
        a_off = b_off = 0
        level, idx = 2, m
        while level != 0:
            if idx // ((4**level) // 2) != 0:
                a_off += 2**level
            if (idx // ((4**level) // 4)) % 2 != 0:
                b_off += 2**level
            level -= 1
            idx -= (4**level) * (idx // (4**level))
        out.append((6 - a_off, 6 - b_off))  # ariths-gen counts offsets from the MSB
    return out


def _recursive(variant: int | None, max_weight: int):
    from ariths_gen.multi_bit_circuits.approximate_multipliers import recursive_multiplier as rm

    blocks = {
        1: rm.UnsignedApproximateTwoBitMultiplierM1,
        2: rm.UnsignedApproximateTwoBitMultiplierM2,
        3: rm.UnsignedApproximateTwoBitMultiplierM3,
        4: rm.UnsignedApproximateTwoBitMultiplierM4,
    }
    subs = [
        blocks[variant]
        if variant is not None and i + j <= max_weight
        else rm.UnsignedAccurateTwoBitMultiplier
        for i, j in _block_offsets()
    ]
    return rm.UnsignedRecursiveMultiplier(_bus("a", 8), _bus("b", 8), submultipliers=subs)


def _ripple_adder_cost(n: int) -> float:
    from ariths_gen.multi_bit_circuits.adders import UnsignedRippleCarryAdder

    return gate_cost(UnsignedRippleCarryAdder(_bus("a", n), _bus("b", n)))


@cache
def _array_cost(n_a: int, n_b: int) -> float:
    return gate_cost(_array(n_a, n_b)) if n_a > 0 and n_b > 0 else 0.0


# ---------------------------------------------------------------- numpy families ----------------------
def _ints() -> tuple[np.ndarray, np.ndarray]:
    v = np.arange(256, dtype=np.int64)
    return v[:, None], v[None, :]


def _leading_one(x: np.ndarray) -> np.ndarray:
    """floor(log2 x) for x >= 1 (int64); -1 for x == 0."""
    out = np.full(x.shape, -1, dtype=np.int64)
    nz = x > 0
    out[nz] = np.floor(np.log2(x[nz])).astype(np.int64)
    return out


def drum_operand(x: np.ndarray, k: int) -> np.ndarray:
    """DRUM-k operand approximation: k bits from the leading one, kept LSB forced to 1."""
    p = _leading_one(x)
    shift = np.maximum(p - k + 1, 0)
    approx = (((x >> shift) | 1) << shift).astype(np.int64)
    return np.where(p < k, x, approx)


def drum_table(k: int) -> np.ndarray:
    a, b = _ints()
    return (drum_operand(a, k) * drum_operand(b, k)).astype(np.int32)


def mitchell_table() -> np.ndarray:
    a, b = np.broadcast_arrays(*_ints())
    ka, kb = _leading_one(a), _leading_one(b)
    nz = (a > 0) & (b > 0)
    ka, kb = np.maximum(ka, 0), np.maximum(kb, 0)
    fa, fb = a - (1 << ka), b - (1 << kb)  # mantissa fractions times 2^ka, 2^kb
    s = fa * (1 << kb) + fb * (1 << ka)  # 2^(ka+kb) · (xa + xb)
    base = 1 << (ka + kb)
    prod = np.where(s < base, base + s, 2 * s)
    return np.where(nz, prod, 0).astype(np.int32)


def _round_pow2(x: np.ndarray) -> np.ndarray:
    p = np.maximum(_leading_one(x), 0)
    up = (p >= 1) & (((x >> np.maximum(p - 1, 0)) & 1) == 1)
    return np.where(x == 0, 0, np.where(up, 1 << (p + 1), 1 << p))


def roba_table() -> np.ndarray:
    a, b = _ints()
    ar, br = _round_pow2(a), _round_pow2(b)
    return (ar * b + br * a - ar * br).astype(np.int32)


def etm_table(k: int) -> np.ndarray:
    a, b = np.broadcast_arrays(*_ints())
    mask = (1 << k) - 1
    ahi, alo, bhi, blo = a >> k, a & mask, b >> k, b & mask
    v = alo | blo
    fill = np.where(v > 0, (1 << (_leading_one(v) + 1)) - 1, 0)
    approx = ((ahi * bhi) << (2 * k)) + (fill << k)
    return np.where((ahi == 0) & (bhi == 0), alo * blo, approx).astype(np.int32)


def perforated_table(s: int, k: int) -> np.ndarray:
    a, b = _ints()
    keep = 0xFF & ~(((1 << k) - 1) << s)
    return (a * (b & keep)).astype(np.int32)


# ---------------------------------------------------------------- energy models -----------------------
def _drum_energy(k: int) -> float:
    per_operand = LOD8 + 3 * k * MUX2  # leading-one detector + 8->k operand steering (3 stages)
    stages = int(np.ceil(np.log2(2 * (8 - k) + 1)))  # shift back by 0 .. 2(8-k)
    out_shift = 16 * stages * MUX2
    return 2 * per_operand + _array_cost(k, k) + out_shift


def _mitchell_energy() -> float:
    per_operand = LOD8 + 3 * 7 * MUX2  # characteristic + 7-bit normalised mantissa
    return 2 * per_operand + _ripple_adder_cost(10) + 16 * 4 * MUX2  # log add, antilog shift


def _roba_energy() -> float:
    per_operand = LOD8 + 8.0  # nearest power of two: leading one + rounding decision
    shifters = 2 * 16 * 4 * MUX2  # Ar·B and Br·A are shifts of B and A by 0..8
    return 2 * per_operand + shifters + 2 * _ripple_adder_cost(16)  # add, subtract the one-hot Ar·Br


def _etm_energy(k: int) -> float:
    hi, lo = _array_cost(8 - k, 8 - k), _array_cost(k, k)
    zero_detect = 2 * (8 - k - 1) + 1.0
    field = 2 * k + 1.0 * k  # OR of the low bits, fill chain (OR prefix)
    return hi + lo + zero_detect + field + 2 * k * MUX2


# ---------------------------------------------------------------- the library -------------------------
_EXACT_ARRAY = "exact ariths-gen 8x8 unsigned array"


def _unsigned_specs() -> list[tuple[str, dict[str, Any], Callable[[], tuple[np.ndarray, float, str]]]]:
    """(name, params, build) for every unsigned built-in; build -> (table, energy_rel, energy_method)."""
    specs: list = []

    def circ(make, ref_cost: Callable[[], float], method: str):
        def build():
            c = make()
            return circuit_table(c), gate_cost(c) / ref_cost(), method

        return build

    def exact_ref() -> float:
        return _array_cost(8, 8)

    gates_array = f"gates:ariths-gen circuit / {_EXACT_ARRAY} (NanGate45 X1 area weights)"
    specs.append(("exact_u8", {"family": "exact"}, circ(_array, exact_ref, gates_array)))
    for k in (2, 3, 4, 5, 6, 7, 8, 9, 10):
        specs.append(
            (
                f"trunc{k}_u8",
                {"family": "trunc", "k": k},
                circ(lambda k=k: _bam(0, k), exact_ref, gates_array),
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
        specs.append(
            (
                f"bam_h{h}_v{v}_u8",
                {"family": "bam", "h": h, "v": v},
                circ(lambda h=h, v=v: _bam(h, v), exact_ref, gates_array),
            )
        )
    for t in (1, 2, 3, 4, 5):
        specs.append(
            (
                f"optrunc{t}_u8",
                {"family": "optrunc", "t": t},
                circ(lambda t=t: _optrunc(t), exact_ref, gates_array),
            )
        )

    rec_exact = lru_cache(maxsize=1)(lambda: gate_cost(_recursive(None, -1)))
    gates_rec = "gates:ariths-gen circuit / exact ariths-gen recursive 8x8 (same adder tree; NanGate45 X1 area weights)"
    for v, t in ((4, 2), (1, 2), (1, 4), (3, 4), (4, 4), (1, 6), (2, 6), (4, 6), (1, 8)):
        specs.append(
            (
                f"rec2x2_m{v}_w{t}_u8",
                {"family": "recursive2x2", "block": f"M{v}", "max_weight": t},
                circ(lambda v=v, t=t: _recursive(v, t), rec_exact, gates_rec),
            )
        )
    for s, k in ((0, 1), (0, 2), (1, 2), (0, 3), (2, 2), (1, 3)):
        specs.append(
            (
                f"perf_r{s}_k{k}_u8",
                {"family": "perforation", "start_row": s, "rows": k},
                lambda s=s, k=k: (
                    perforated_table(s, k),
                    _array_cost(8, 8 - k) / exact_ref(),
                    f"gates:array8x{8 - k} / {_EXACT_ARRAY}",
                ),
            )
        )
    model = "model:gate model (ariths-gen blocks + LOD/mux formulas) / " + _EXACT_ARRAY
    for k in (3, 4, 5, 6):
        specs.append(
            (
                f"drum{k}_u8",
                {"family": "drum", "k": k},
                lambda k=k: (drum_table(k), _drum_energy(k) / exact_ref(), model),
            )
        )
    specs.append(
        (
            "mitchell_u8",
            {"family": "mitchell"},
            lambda: (mitchell_table(), _mitchell_energy() / exact_ref(), model),
        )
    )
    specs.append(("roba_u8", {"family": "roba"}, lambda: (roba_table(), _roba_energy() / exact_ref(), model)))
    for k in (2, 3, 4):
        specs.append(
            (
                f"etm{k}_u8",
                {"family": "etm", "k": k},
                lambda k=k: (etm_table(k), _etm_energy(k) / exact_ref(), model),
            )
        )
    return specs


# unsigned cores that also get a sign-magnitude signed variant
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


def sign_magnitude_table(core: np.ndarray) -> np.ndarray:
    """Signed table from an unsigned core: lut[a & 0xFF, b & 0xFF] = sign(a)·sign(b)·core[|a|, |b|].

    |−128| = 128 is a valid index of the 8-bit unsigned core, so every int8 operand is covered."""
    v = operand_values(signed=True)
    mag = np.abs(v)
    sign = np.sign(v)
    core64 = np.asarray(core, dtype=np.int64)
    return (np.outer(sign, sign) * core64[np.ix_(mag, mag)]).astype(np.int32)


def signed_energy(core_energy_rel: float) -> float:
    """Signed energy_rel from the unsigned core's (see the module docstring)."""
    e_core = core_energy_rel * _array_cost(8, 8)
    return (e_core + SIGN_MAGNITUDE_OVERHEAD) / (_array_cost(8, 8) + SIGN_MAGNITUDE_OVERHEAD)


def _cache_path() -> Path:
    base = os.environ.get("DSE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dse"
    )
    try:
        import ariths_gen

        ag = getattr(ariths_gen, "__version__", "")
    except ImportError:  # pragma: no cover
        ag = ""
    if not ag:
        from importlib.metadata import version

        ag = version("ariths-gen")
    return Path(base) / f"builtin-multipliers-v{BUILTIN_VERSION}-ag{ag}.npz"


def _compute_unsigned() -> list[tuple[str, dict, np.ndarray, float, str]]:
    out = []
    for name, params, build in _unsigned_specs():
        table, energy, method = build()
        out.append((name, params, table, float(energy), method))
    return out


def _load_cache(path: Path) -> list[tuple[str, dict, np.ndarray, float, str]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            tables = z["tables"]
        if tables.shape != (len(meta), 256, 256):
            return None
        return [
            (m["name"], m["params"], tables[i], m["energy_rel"], m["energy_method"])
            for i, m in enumerate(meta)
        ]
    except Exception:  # a missing, stale or corrupt cache is recomputed
        return None


def _save_cache(path: Path, entries) -> None:
    import io

    from dse.util import atomic_write_bytes

    meta = [{"name": n, "params": p, "energy_rel": e, "energy_method": m} for n, p, _, e, m in entries]
    buf = io.BytesIO()
    np.savez(
        buf,
        meta=np.array(json.dumps(meta)),
        tables=np.stack([t for _, _, t, _, _ in entries]).astype(np.int32),
    )
    try:
        atomic_write_bytes(path, buf.getvalue())
        for stale in path.parent.glob("builtin-multipliers-v*.npz"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:  # a read-only home must not break the library
        pass


def unsigned_entries(use_cache: bool = True) -> list[tuple[str, dict, np.ndarray, float, str]]:
    """(name, params, table, energy_rel, energy_method) of every unsigned built-in, from the disk cache
    when it is valid, else computed (circuits evaluated) and cached."""
    path = _cache_path()
    if use_cache:
        cached = _load_cache(path)
        names = [s[0] for s in _unsigned_specs()]
        if cached is not None and [c[0] for c in cached] == names:
            return cached
    entries = _compute_unsigned()
    if use_cache:
        _save_cache(path, entries)
    return entries


def builtin_multipliers() -> list[Multiplier]:
    """Every built-in multiplier: unsigned first (exact_u8 first), then signed (exact_s8 first).

    Built once per process (tables from the disk cache when valid); each call returns a new list."""
    return list(_builtin_tuple())


@lru_cache(maxsize=1)
def _builtin_tuple() -> tuple[Multiplier, ...]:
    unsigned = []
    for name, params, table, energy, method in unsigned_entries():
        energy = 1.0 if name == "exact_u8" else energy
        unsigned.append(Multiplier(name, False, table, energy, method, "builtin", dict(params)))
    by_name = {m.name: m for m in unsigned}
    signed = [
        Multiplier(
            "exact_s8",
            True,
            exact_table(signed=True),
            1.0,
            "exact (definition)",
            "builtin",
            {"family": "exact"},
        )
    ]
    for core_name in SIGNED_CORES:
        core = by_name[core_name]
        signed.append(
            Multiplier(
                core_name[:-3] + "_s8",
                True,
                sign_magnitude_table(core.lut),
                signed_energy(core.energy_rel),
                "sign-magnitude wrapper: (E_core + E_sm) / (E_exact + E_sm); core " + core.energy_method,
                "builtin",
                {**core.params, "core": core_name, "wrapper": "sign-magnitude"},
            )
        )
    return tuple(unsigned + signed)
