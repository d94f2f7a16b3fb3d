"""The multiplier model, its metrics and the built-in library: what a user relies on when picking one."""

import fnmatch
import re

import numpy as np
import pytest

from dse.multipliers import (
    Multiplier,
    circuits,
    energy_model,
    exact_table,
    formulas,
    load_library,
    operand_values,
    table_metrics,
)
from dse.multipliers.builtin import builtin_multipliers, unsigned_entries
from dse.multipliers.catalogue import UNSIGNED_SPECS
from dse.multipliers.library import select
from dse.util import UserError

U = np.arange(256, dtype=np.int64)


def lib_by_name():
    return {m.name: m for m in builtin_multipliers()}


def bits(x, i):
    return (x >> i) & 1


# ---------------------------------------------------------------- metrics ---------------------------------
@pytest.mark.parametrize("signed", [False, True])
def test_exact_table_has_all_metrics_zero(signed):
    m = table_metrics(exact_table(signed), signed)
    assert set(m) >= {"mae", "mae_percent", "wce", "wce_percent", "mre_percent", "ep_percent", "mse"}
    assert all(v == 0 for v in m.values())


def test_exact_table_orientation_and_twos_complement_indexing():
    s = exact_table(True)
    assert s[0xFF, 2] == -2  # byte 0xFF is -1
    assert s[0x80, 0x80] == 16384  # -128 * -128
    assert s[3, 0xFE] == -6
    assert exact_table(False)[255, 254] == 255 * 254


def test_constant_offset_metrics_against_hand_computation():
    c = 3
    lut = exact_table(False) + c
    m = table_metrics(lut, False)
    harmonic = sum(1.0 / k for k in range(1, 256))
    assert m["mae"] == c and m["wce"] == c and m["mean_error"] == c and m["std_error"] == 0
    assert m["mae_percent"] == pytest.approx(100 * c / 65536)
    assert m["wce_percent"] == pytest.approx(100 * c / 65536)
    assert m["ep_percent"] == 100 and m["mse"] == c * c
    # MRE over the 255^2 pairs with a non-zero exact product: mean of c / (a b) = c H_255^2 / 255^2
    assert m["mre_percent"] == pytest.approx(100 * c * harmonic**2 / 255**2)


def test_signed_constant_offset_mre_uses_magnitudes():
    lut = exact_table(True) - 2
    m = table_metrics(lut, True)
    h = sum(1.0 / k for k in range(1, 129)) + sum(1.0 / k for k in range(1, 128))
    assert m["mean_error"] == -2 and m["mae"] == 2
    assert m["mre_percent"] == pytest.approx(100 * 2 * h**2 / 255**2)


def test_single_wrong_entry():
    lut = exact_table(False).copy()
    lut[3, 5] = 16  # exact 15
    m = table_metrics(lut, False)
    assert m["mae"] == pytest.approx(1 / 65536)
    assert m["wce"] == 1 and m["ep_percent"] == pytest.approx(100 / 65536)
    assert m["mre_percent"] == pytest.approx(100 * (1 / 15) / 255**2)
    assert m["mean_error"] == pytest.approx(1 / 65536)


def _independent_column_truncation(k):
    """Products with the partial-product bits a_i b_j, i + j < k, dropped; written out bit by bit."""
    out = np.zeros((256, 256), dtype=np.int64)
    for a in range(256):
        for i in range(8):
            if not (a >> i) & 1:
                continue
            for j in range(8):
                if i + j >= k:
                    out[a, :] += ((U >> j) & 1) << (i + j)
    return out


@pytest.mark.parametrize("k", [6, 9])
def test_truncated_multiplier_table_and_metrics_match_an_independent_computation(k):
    m = lib_by_name()[f"trunc{k}_u8"]
    ref = _independent_column_truncation(k)
    assert np.array_equal(m.lut, ref)
    err = ref - np.outer(U, U)
    assert m.metrics["mae"] == pytest.approx(np.abs(err).mean())
    assert m.metrics["wce"] == np.abs(err).max()
    assert m.metrics["mean_error"] == pytest.approx(err.mean())
    assert m.metrics["mse"] == pytest.approx((err.astype(float) ** 2).mean())
    # the truncated columns contribute on average sum over cells i+j<k of 2^(i+j)/4 (bits independent, p=1/2)
    mean_dropped = sum(2 ** (i + j) / 4 for i in range(8) for j in range(8) if i + j < k)
    assert -m.metrics["mean_error"] == pytest.approx(mean_dropped)


def test_multiplier_rejects_wrong_shape_and_freezes_its_table():
    with pytest.raises(ValueError):
        Multiplier("x_u8", False, np.zeros((255, 256)), 1.0, "test")
    m = Multiplier("x_u8", False, exact_table(False), 1.0, "test")
    assert m.is_exact and m.lut.dtype == np.int32
    with pytest.raises(ValueError):
        m.lut[0, 0] = 1


# ---------------------------------------------------------------- library content -------------------------
def test_library_size_spread_and_names():
    ms = builtin_multipliers()
    names = [m.name for m in ms]
    assert len(names) == len(set(names))
    for m in ms:
        assert re.fullmatch(r"[a-z0-9_]+_(u8|s8)", m.name), m.name
        assert m.name.endswith("_s8") == m.signed
        assert m.lut.dtype == np.int32 and m.lut.shape == (256, 256)
        assert np.isfinite(m.energy_rel) and m.energy_rel > 0 and m.energy_method
        assert m.source == "builtin" and "family" in m.params
    for signed, n_min in ((False, 20), (True, 10)):
        approx = [m for m in ms if m.signed == signed and not m.is_exact]
        assert len(approx) >= n_min
        mae = [m.metrics["mae_percent"] for m in approx]
        assert min(mae) < 0.05 and max(mae) > 2
        assert len({m.params["family"] for m in approx}) >= 6
        energies = [m.energy_rel for m in approx]
        assert min(energies) < 0.35 and sum(e < 0.95 for e in energies) >= n_min
    by = lib_by_name()
    for name, signed in (("exact_u8", False), ("exact_s8", True)):
        assert by[name].is_exact and by[name].energy_rel == 1.0 and by[name].signed == signed


def test_builtin_tables_are_distinct_within_a_format():
    ms = builtin_multipliers()
    for signed in (False, True):
        shas = [m.sha256 for m in ms if m.signed == signed]
        assert len(shas) == len(set(shas))


def test_gate_cost_table_applied_to_the_exact_array():
    # ariths-gen's 8x8 unsigned array multiplier: 168 AND, 104 XOR, 48 OR
    assert energy_model.gate_cost(circuits.array_multiplier(8, 8)) == pytest.approx(
        168 * 1.0 + 104 * 1.5 + 48 * 1.0
    )


def test_truncation_trades_error_for_energy_monotonically():
    by = lib_by_name()
    ks = range(4, 11)
    mae = [by[f"trunc{k}_u8"].metrics["mae"] for k in ks]
    energy = [by[f"trunc{k}_u8"].energy_rel for k in ks]
    assert mae == sorted(mae) and energy == sorted(energy, reverse=True)


def test_broken_array_circuits_match_the_definition():
    by = lib_by_name()
    ai, bi = np.meshgrid(U, U, indexing="ij")
    for m in by.values():
        if m.params["family"] != "bam" or m.signed:
            continue
        h, v = m.params["h"], m.params["v"]
        ref = np.zeros((256, 256), dtype=np.int64)
        for i in range(8):
            for j in range(h, 8):
                if i + j >= v:
                    ref += (bits(ai, i) & bits(bi, j)) << (i + j)
        assert np.array_equal(m.lut, ref), m.name


def test_operand_truncation_and_perforation_match_the_definition():
    by = lib_by_name()
    for t in (1, 2, 3, 4, 5):
        mask = 0xFF & ~((1 << t) - 1)
        assert np.array_equal(by[f"optrunc{t}_u8"].lut, np.outer(U & mask, U & mask))
    for name in ("perf_r0_k2_u8", "perf_r1_k3_u8"):
        s, k = by[name].params["start_row"], by[name].params["rows"]
        assert np.array_equal(by[name].lut, np.outer(U, U & ~(((1 << k) - 1) << s)))


BLOCKS = {  # ariths-gen's 2x2 blocks (a, b in 0..3): exact except at 3x3
    1: 7,
    3: 11,
    4: 5,
}


@pytest.mark.parametrize("name", ["rec2x2_m1_w4_u8", "rec2x2_m4_w6_u8", "rec2x2_m3_w4_u8"])
def test_recursive_multiplier_is_the_sum_of_its_blocks(name):
    m = lib_by_name()[name]
    variant, max_w = int(m.params["block"][1:]), m.params["max_weight"]
    ref = np.zeros((256, 256), dtype=np.int64)
    for i in (0, 2, 4, 6):
        for j in (0, 2, 4, 6):
            x, y = ((U >> i) & 3)[:, None], ((U >> j) & 3)[None, :]
            block = x * y
            if i + j <= max_w:
                block = np.where((x == 3) & (y == 3), BLOCKS[variant], block)
            ref = ref + (block << (i + j))
    assert np.array_equal(m.lut, ref)


def test_all_exact_recursive_circuit_is_exact():
    assert np.array_equal(circuits.circuit_table(circuits.recursive(None, -1)), exact_table(False))


def test_every_unsigned_circuit_is_costed_against_the_one_exact_multiplier():
    """One scale per format: every gate-level design is its circuit's gate cost over the exact array's
    (372 units, exact_u8 = 1.0); the recursive family was once divided by its own exact recursive circuit
    (852.5 units) and labelled 0.68-0.99 while costing 1.55-2.27x exact_u8."""
    by = lib_by_name()
    reference = energy_model.gate_cost(circuits.array_multiplier(8, 8))
    assert reference == pytest.approx(372.0)
    for v, t in ((1, 2), (1, 6), (4, 6), (1, 8)):
        m = by[f"rec2x2_m{v}_w{t}_u8"]
        cost = energy_model.gate_cost(circuits.recursive(v, t))
        assert m.energy_rel == pytest.approx(cost / reference) and m.energy_rel > 1.5, m.name
    assert by["rec2x2_m1_w6_u8"].energy_rel == pytest.approx(1.711, abs=1e-3)
    for h, v in ((2, 6), (4, 10)):
        cost = energy_model.gate_cost(circuits.broken_array(h, v))
        assert by[f"bam_h{h}_v{v}_u8"].energy_rel == pytest.approx(cost / reference)
    for m in by.values():
        if not m.signed and "array" not in m.energy_method and m.params["family"] != "exact":
            pytest.fail(f"{m.name}: energy method {m.energy_method!r} does not name the exact array")


def test_designs_that_cost_at_least_exact_are_dominated_and_left_out_of_wildcards(tmp_path):
    by = lib_by_name()
    dominated = {n for n, m in by.items() if m.dominated}
    assert dominated == {n for n, m in by.items() if m.energy_rel >= 1.0 and not m.is_exact}
    assert {"roba_u8", "roba_s8", "rec2x2_m1_w8_u8", "rec2x2_m4_w6_s8"} <= dominated
    assert not by["exact_u8"].dominated and not by["exact_s8"].dominated and not by["drum4_u8"].dominated
    assert by["roba_u8"].to_json()["dominated"] is True and by["drum4_u8"].to_json()["dominated"] is False
    lib = load_library(tmp_path / "none")
    for signed in (False, True):
        star = {m.name for m in lib.select(["*"], signed=signed)}
        assert star and not star & dominated
        assert star == {m.name for m in lib.multipliers(signed) if not m.dominated}
    assert [m.name for m in lib.select(["roba_u8"], signed=False)] == ["roba_u8"]  # by name: selected
    with pytest.raises(UserError, match=r"'rec2x2_\*' matches only dominated multipliers"):
        lib.select(["rec2x2_*"], signed=False)


@pytest.mark.parametrize("k", [3, 4, 6])
def test_drum_is_rank_one_nearly_unbiased_and_exact_on_small_operands(k):
    m = lib_by_name()[f"drum{k}_u8"]
    t = m.lut.astype(np.int64)  # rank 1, exactly: t[a, b] t[1, 1] == t[a, 1] t[1, b]
    assert np.array_equal(t * t[1, 1], np.outer(t[:, 1], t[1, :]))
    if k == 4:  # the same by SVD (slow-ish when the BLAS threads share two busy cores, so once)
        assert np.linalg.matrix_rank(t.astype(np.float64)) == 1
    # unbiased up to half an LSB per operand: the mean operand error is at most 0.5, so the product's bias
    # stays below 1 % of the mean exact product (127.5^2) although the MAE is much larger for small k
    operand_err = formulas.drum_operand(U, k) - U
    assert 0 <= operand_err.mean() <= 0.5
    assert abs(m.metrics["mean_error"]) < 0.01 * 127.5**2
    small = 1 << k
    assert np.array_equal(m.lut[:small, :small], exact_table(False)[:small, :small])


def test_mitchell_never_exceeds_exact_and_errs_at_most_one_ninth():
    m = lib_by_name()["mitchell_u8"]
    exact = exact_table(False).astype(np.int64)
    assert (m.lut <= exact).all()
    assert (m.lut[0, :] == 0).all() and (m.lut[:, 0] == 0).all()
    nz = exact > 0
    rel = (exact[nz] - m.lut[nz]) / exact[nz]
    assert rel.max() == pytest.approx(1 / 9, abs=2e-3)
    pow2 = [1, 2, 4, 8, 16, 32, 64, 128]
    assert np.array_equal(m.lut[np.ix_(pow2, U)], exact[np.ix_(pow2, U)])


def test_roba_error_is_the_product_of_the_rounding_errors():
    m = lib_by_name()["roba_u8"]
    r = np.array(
        [0] + [min((1 << p for p in range(9)), key=lambda q: (abs(x - q), -q)) for x in range(1, 256)]
    )
    ref = np.outer(U, U) - np.outer(U - r, U - r)
    assert np.array_equal(m.lut, ref)


def test_etm_is_exact_when_both_operands_are_small():
    for k in (2, 3, 4):
        m = lib_by_name()[f"etm{k}_u8"]
        s = 1 << k
        assert np.array_equal(m.lut[:s, :s], exact_table(False)[:s, :s])
        assert not m.is_exact


def test_signed_variants_are_sign_magnitude_wrappers_with_their_own_metrics():
    by = lib_by_name()
    v = operand_values(True)
    signed_approx = [m for m in by.values() if m.signed and not m.is_exact]
    for m in signed_approx:
        core = by[m.params["core"]]
        expect = np.sign(v)[:, None] * np.sign(v)[None, :] * core.lut.astype(np.int64)[np.ix_(abs(v), abs(v))]
        assert np.array_equal(m.lut, expect), m.name
        # -128 goes through the core as magnitude 128
        assert m.lut[0x80, 3] == -core.lut[128, 3]
        assert m.metrics != core.metrics
        assert m.metrics["mean_error"] == pytest.approx(0, abs=1.0)  # sign symmetry cancels the core's bias
        assert m.energy_rel == pytest.approx(energy_model.signed_energy(core.energy_rel))
        assert m.dominated == core.dominated and (m.energy_rel < 1.0) == (core.energy_rel < 1.0)
    exact_core = by["trunc8_u8"]
    assert by["trunc8_s8"].energy_rel == pytest.approx(energy_model.signed_energy(exact_core.energy_rel))
    assert energy_model.signed_energy(1.0) == pytest.approx(1.0)
    # a signed table must be signed indeed: the exact wrapper reproduces the exact signed product
    assert np.array_equal(formulas.sign_magnitude_table(exact_table(False)), exact_table(True))


def test_disk_cache_round_trip_and_corruption(tmp_path, monkeypatch):
    library_table = lib_by_name()["bam_h2_v6_u8"].lut  # before the patching below
    few = [spec for spec in UNSIGNED_SPECS if spec.name in ("exact_u8", "bam_h2_v6_u8", "drum4_u8")]
    monkeypatch.setenv("DSE_CACHE_DIR", str(tmp_path))
    fresh = unsigned_entries(few, use_cache=True)  # computes and writes the cache
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and [e.name for e in fresh] == ["exact_u8", "bam_h2_v6_u8", "drum4_u8"]
    cached = unsigned_entries(few, use_cache=True)
    for a, b in zip(fresh, cached, strict=True):
        assert np.array_equal(a.lut, b.lut) and a.energy_rel == b.energy_rel
        assert a.energy_method == b.energy_method and a.params == b.params
    files[0].write_bytes(b"garbage")
    again = unsigned_entries(few, use_cache=True)
    assert all(np.array_equal(a.lut, b.lut) for a, b in zip(fresh, again, strict=True))
    # the library the rest of the project sees (maybe from a cache) equals a fresh circuit evaluation
    assert np.array_equal(library_table, fresh[1].lut)


# ---------------------------------------------------------------- Library API ------------------------------
def test_library_get_names_select(tmp_path):
    lib = load_library(tmp_path / "none")
    assert len(lib) == len(builtin_multipliers()) == len(list(lib))
    assert lib.names()[0] == "exact_u8" and "exact_s8" in lib
    assert lib.get("drum4_u8").name == "drum4_u8"
    with pytest.raises(UserError, match="drum4_u8"):
        lib.get("drum4_u9")
    sel = lib.select(["trunc*", "exact_u8"], signed=False)
    assert [m.name for m in sel] == [
        n for n in lib.names() if n == "exact_u8" or fnmatch.fnmatch(n, "trunc*_u8")
    ]
    assert all(m.signed for m in lib.select(["*"], signed=True))
    with pytest.raises(UserError, match="bam_x"):
        lib.select(["bam_x*"], signed=False)
    with pytest.raises(UserError):
        lib.select(["exact_u8"], signed=True)  # exists, but not in that format
    assert all(not m.signed for m in lib.multipliers(False)) and len(lib.multipliers(True)) >= 11


def test_select_keeps_pool_order_takes_each_once_and_refuses_a_pattern_that_matches_nothing(tmp_path):
    pool = [Multiplier(n, False, exact_table(False), 1.0, "test") for n in ("b_u8", "a_u8", "c_u8")]
    assert [m.name for m in select(pool, ["c*", "a*", "*_u8"], where="here")] == ["b_u8", "a_u8", "c_u8"]
    assert [m.name for m in select(pool, ["c_u8", "b_u8"], where="here")] == ["b_u8", "c_u8"]
    with pytest.raises(UserError, match=r"^layers\.x: 'd\*' matches nothing in the space \(b_u8\)$"):
        select(pool, ["a*", "d*"], where="layers.x", nothing="nothing in the space", hint=lambda _: " (b_u8)")
    lib = load_library(tmp_path / "none")
    with pytest.raises(
        UserError, match=r"^space s: 'exact_u8' matches no signed multiplier .*exact_u8 is not signed"
    ):
        lib.select(["exact_u8"], signed=True, where="space s")
