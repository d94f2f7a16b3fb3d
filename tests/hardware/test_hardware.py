"""Hardware hand-off: Verilog, vectors, iverilog verification, yosys synthesis, toggle activity.

The iverilog / yosys tests (`eda`) run a representative subset: one design of each circuit family (exact
array, column truncation, broken array, operand truncation, recursive 2x2) and the sign-magnitude wrapper
(exact_s8 and one approximate signed core), about 1.5 s each on 2 cores; `dse multipliers verify --all`
covers the whole library (benchmarks/ or by hand)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dse.hardware import activity, simulate, synth, vectors, verilog
from dse.multipliers import circuits
from dse.multipliers.builtin import SYNTH_FILE, builtin_multipliers
from dse.multipliers.core import Multiplier
from dse.util import UserError

MULTS = {m.name: m for m in builtin_multipliers()}
CIRCUIT_NAMES = [m.name for m in MULTS.values() if verilog.has_circuit(m)]
SUBSET = [
    "exact_u8",
    "trunc8_u8",
    "bam_h2_v6_u8",
    "optrunc2_u8",
    "rec2x2_m1_w2_u8",
    "exact_s8",
    "bam_h3_v7_s8",
]
eda = pytest.mark.skipif(
    shutil.which("iverilog") is None or shutil.which("yosys") is None,
    reason="Debian iverilog / yosys not installed",
)


def test_every_circuit_family_has_verilog_and_formulas_do_not() -> None:
    families = {m.params["family"] for m in MULTS.values() if verilog.has_circuit(m)}
    assert families == set(verilog.CIRCUIT_FAMILIES)
    assert len([n for n in CIRCUIT_NAMES if n.endswith("_u8")]) == 42
    for name in ("drum4_u8", "mitchell_u8", "perf_r0_k2_u8", "etm3_u8", "roba_s8"):
        assert verilog.verilog(MULTS[name]) is None


@pytest.mark.parametrize("name", [n for n in CIRCUIT_NAMES if n.endswith("_u8")])
def test_rebuilt_circuit_is_the_table(name: str) -> None:
    """circuit_of rebuilds each unsigned design from its params: its gate-level table is the library's."""
    c = verilog.circuit_of(MULTS[name])
    np.testing.assert_array_equal(circuits.circuit_table(c), MULTS[name].lut)


def test_verilog_module_is_named_after_the_multiplier() -> None:
    text = verilog.verilog(MULTS["bam_h2_v6_s8"])
    assert text is not None
    assert "module bam_h2_v6_s8(input [7:0] a, input [7:0] b, output [15:0] bam_h2_v6_s8_out);" in text
    assert "module bam_h2_v6_u8(" in text and "u_bam" not in text


def test_vectors_hold_every_pair_and_the_int32_product() -> None:
    m = MULTS["exact_s8"]
    lines = [x for x in vectors.vector_text(m).splitlines() if not x.startswith("//")]
    assert len(lines) == 65536
    w = int(lines[255 * 256 + 3], 16)  # a = 0xff (-1), b = 3
    assert (w >> 40, (w >> 32) & 0xFF) == (255, 3)
    assert (w & 0xFFFFFFFF) - (1 << 32) == -3


@eda
@pytest.mark.eda
@pytest.mark.parametrize("name", SUBSET)
def test_iverilog_simulation_is_the_table(name: str) -> None:
    result = simulate.verify(MULTS[name])
    assert result.ok, result.message()
    assert result.vectors == 65536


@eda
@pytest.mark.eda
def test_a_wrong_table_names_the_first_differing_pair() -> None:
    m = MULTS["trunc8_u8"]
    lut = m.lut.copy()
    lut[3, 200] += 1
    lut[7, 9] -= 5
    bad = Multiplier(m.name, False, lut, m.energy_rel, m.energy_method, "builtin", dict(m.params))
    result = simulate.simulate_verilog(bad, verilog.verilog(m) or "", vectors.vector_text(bad))
    assert not result.ok and result.mismatches == 2
    assert result.first == simulate.Mismatch(3, 200, int(m.lut[3, 200]), int(lut[3, 200]))
    assert "a=0x03, b=0xc8" in result.message()


def test_missing_tool_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="Debian package `yosys`"):
        synth.synthesize(MULTS["trunc8_u8"])
    with pytest.raises(UserError, match="Debian package `iverilog`"):
        simulate.verify(MULTS["trunc8_u8"])


def test_no_circuit_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no circuit"):
        simulate.verify(MULTS["drum4_u8"])


@eda
@pytest.mark.eda
@pytest.mark.parametrize("name", ["exact_u8", "bam_h3_v7_u8", "rec2x2_m1_w2_s8"])
def test_shipped_synthesis_is_what_yosys_gives(name: str) -> None:
    """synth.json is reproducible: yosys, run now, gives the shipped cell counts."""
    s = synth.synthesize(MULTS[name])
    doc = json.loads(SYNTH_FILE.read_text())
    shipped = doc["designs"][name]
    assert set(s.by_type) <= set(synth.CELL_COST)
    if synth.yosys_version() == doc["tool"]:
        assert (s.cells, s.by_type) == (shipped["cells"], shipped["by_type"])
    else:  # another yosys release: ABC may map a little differently, never far off
        assert abs(s.cells - shipped["cells"]) <= 0.15 * shipped["cells"]


def test_shipped_synthesis_covers_every_circuit_with_its_current_table() -> None:
    for name in CIRCUIT_NAMES:
        m = MULTS[name]
        assert m.synth_cells is not None and m.synth_area_rel is not None, name
    assert MULTS["exact_u8"].synth_area_rel == 1.0 and MULTS["exact_s8"].synth_area_rel == 1.0
    assert MULTS["drum4_u8"].synth_cells is None
    # a table that changed is not given a stale figure
    designs = json.loads(SYNTH_FILE.read_text())["designs"]
    assert all(designs[n]["lut_sha256"] == MULTS[n].sha256 for n in CIRCUIT_NAMES)
    # fewer columns kept, smaller synthesized circuit
    areas = [MULTS[f"trunc{k}_u8"].synth_area_rel or 0.0 for k in range(2, 11)]
    assert areas == sorted(areas, reverse=True)


def test_switched_cost_counts_toggles() -> None:
    net = activity.netlist(circuits.array_multiplier())
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(4, 50)).astype(np.uint8)
    b = np.broadcast_to(rng.integers(0, 256, size=(4, 1)), a.shape).astype(np.uint8)
    # no input change, no toggle
    assert activity.switched_cost(net, np.repeat(a[:, :1], 50, axis=1), b) == 0.0
    fwd = activity.switched_cost(net, a, b)
    assert fwd > 0
    assert activity.switched_cost(net, a[:, ::-1].copy(), b) == pytest.approx(fwd)  # time-reversal
    # holding each operand for two steps: same toggles over 99 instead of 49 operations
    a2, b2 = np.repeat(a, 2, axis=1), np.repeat(b, 2, axis=1)
    assert activity.switched_cost(net, a2, b2) == pytest.approx(fwd * 49 / 99)


def test_layer_activity_relative_to_exact() -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, size=(1, 64, 20)).astype(np.int16)
    weights = rng.integers(-127, 128, size=(1, 20, 8)).astype(np.int16)
    picks = [MULTS[n] for n in ("exact_u8", "trunc10_u8", "drum4_u8")]
    out = activity.layer_activity(picks, rows, weights, "sign-magnitude")
    assert out["exact_u8"] is not None and out["exact_u8"].toggle_energy_rel == 1.0
    t10 = out["trunc10_u8"]
    assert t10 is not None and 0 < t10.toggle_energy_rel < 1
    assert out["drum4_u8"] is None
    a, b = activity.operand_streams(rows, weights, "sign-magnitude")
    assert a.shape == b.shape == (64, 64)
    assert (b == b[:, :1]).all()  # weight-stationary: one weight per multiplier
    assert b.max() <= 127


C_MODEL = """// PDK45_PWR = 0.200 mW
#include <stdint.h>
uint16_t mul8u_HW(uint8_t A, uint8_t B) { return (uint16_t)(A * B) & 0xFFF0; }
"""


def test_handoff_writes_verilog_c_file_vectors_and_manifest(tmp_path) -> None:
    from dse.hardware.handoff import write_handoff
    from dse.multipliers.importers import import_into_library
    from dse.multipliers.library import load_library

    lib_dir = tmp_path / "lib"
    src = tmp_path / "mul8u_HW.c"
    src.write_text(C_MODEL)
    import_into_library([src], lib_dir)
    lib = {m.name: m for m in load_library(lib_dir)}
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    layers = [
        {"name": "conv1", "multiplier": "mul8u_hw", "lut_sha256": lib["mul8u_hw"].sha256},
        {"name": "fc1", "multiplier": "bam_h2_v6_u8", "lut_sha256": lib["bam_h2_v6_u8"].sha256},
        {"name": "fc2", "multiplier": "drum4_u8", "lut_sha256": lib["drum4_u8"].sha256},
        {"name": "fc3", "multiplier": "bam_h2_v6_u8", "lut_sha256": lib["bam_h2_v6_u8"].sha256},
    ]
    out = tmp_path / "hw"
    write_handoff(out, layers, lib, cfg, lib_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    by = {e["name"]: e for e in manifest["multipliers"]}
    assert by["bam_h2_v6_u8"]["layers"] == ["fc1", "fc3"]
    assert by["bam_h2_v6_u8"]["verilog"] == "bam_h2_v6_u8.v" and (out / "bam_h2_v6_u8.v").is_file()
    assert by["mul8u_hw"]["verilog"] is None and (out / "mul8u_hw.c").read_text() == C_MODEL
    assert by["drum4_u8"]["verilog"] is None and by["drum4_u8"]["c_model"] is None
    for name, e in by.items():
        assert e["lut_sha256"] == lib[name].sha256
        words = vectors.vector_words(lib[name])
        lines = [x for x in (out / e["vectors"]).read_text().splitlines() if not x.startswith("//")]
        assert [int(x, 16) for x in lines[:5]] == words[:5].tolist()
    # imported before dse kept C sources: no C file, no error, the manifest says so
    (lib_dir / "mul8u_hw.c").unlink()
    write_handoff(tmp_path / "hw1", layers[:1], lib, cfg, lib_dir)
    entry = json.loads((tmp_path / "hw1" / "manifest.json").read_text())["multipliers"][0]
    assert entry["c_model"] is None and "not kept in the library" in entry["note"]
    bad = [{**layers[0], "lut_sha256": "0" * 64}]
    with pytest.raises(UserError, match="lut_sha256 differs"):
        write_handoff(tmp_path / "hw2", bad, lib, cfg, lib_dir)


def _cli(*args: str):
    from click.testing import CliRunner

    from dse.cli import cli

    return CliRunner().invoke(cli, list(args), env={"DSE_NO_PROGRESS": "1"})


@eda
@pytest.mark.eda
def test_cli_verify_and_export_verilog(tmp_path) -> None:
    r = _cli("multipliers", "verify", "trunc8_s8", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["ok"] is True
    assert _cli("multipliers", "verify", "drum4_u8").exit_code == 2
    v = tmp_path / "t.v"
    assert _cli("multipliers", "export", "trunc8_u8", "--verilog", str(v)).exit_code == 0
    assert "module trunc8_u8(" in v.read_text()
    r = _cli("multipliers", "export", "mitchell_u8", "--verilog", str(tmp_path / "m.v"))
    assert r.exit_code == 2 and "no circuit" in r.output and not (tmp_path / "m.v").exists()


def test_cli_list_shows_synthesis_next_to_energy() -> None:
    r = _cli("multipliers", "list", "--unsigned")
    head, exact = r.stdout.splitlines()[:2]
    assert head.split()[6:9] == ["energy", "synth", "cells"]
    assert exact.split()[6:9] == ["1.000", "1.000", str(MULTS["exact_u8"].synth_cells)]
    r = _cli("multipliers", "list", "--json")
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["trunc8_u8"]["synth_area_rel"] == MULTS["trunc8_u8"].synth_area_rel
    assert rows["drum4_u8"]["synth_cells"] is None
