"""The toggle-based energy of a real (tiny, prepared) run: per layer, on its profiled operand streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dse.errors.profiles import get_profiles
from dse.hardware.activity import operand_streams
from dse.multipliers.library import load_library
from dse.prepare import load_prepared
from dse.report import activity
from dse.report.activity import toggle_energy, toggle_lines, toggle_table
from dse.rundir import RunDir


@pytest.mark.slow
def test_toggle_table_of_a_prepared_run(tiny_digits_run: Path, tmp_path: Path) -> None:
    profiles = get_profiles(load_prepared(tiny_digits_run))
    lib = load_library(tmp_path / "lib")
    mults = [lib.get(n) for n in ("exact_u8", "trunc8_u8", "drum4_u8")]
    table = toggle_table(tiny_digits_run, mults, "sign-magnitude")
    names = [p.name for p in profiles.layers]
    assert [e.layer for e in table.entries] == [n for n in names for _ in mults]
    for name in names:
        exact, t8, drum = (table.get(name, m.name) for m in mults)
        assert exact is not None and exact.toggle_energy_rel == 1.0 and exact.exact_switched_per_op > 0
        assert t8 is not None and t8.toggle_energy_rel is not None and 0 < t8.toggle_energy_rel < 1
        assert drum is not None and drum.toggle_energy_rel is None
        assert toggle_energy(tiny_digits_run, name, mults[1], "sign-magnitude") == t8.toggle_energy_rel
    p = profiles.layers[0]
    a, b = operand_streams(p.rows, p.weights, "sign-magnitude")
    assert np.isin(a, p.rows).all() and (b == b[:, :1]).all()
    assert any("trunc8_u8" in line for line in toggle_lines(table))


@pytest.mark.slow
def test_the_toggle_memo_keeps_one_run(tiny_digits_run: Path, tmp_path: Path) -> None:
    """A long process (a report server, a notebook) that reads many runs keeps only the last one's."""
    import shutil

    profiles = get_profiles(load_prepared(tiny_digits_run))
    m = load_library(tmp_path / "lib").get("trunc8_u8")
    layer = profiles.layers[0].name
    other = RunDir(tmp_path / "other")
    other.profiles_npz.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(RunDir(tiny_digits_run).profiles_npz, other.profiles_npz)
    first = toggle_energy(tiny_digits_run, layer, m, "sign-magnitude")
    assert toggle_energy(other.path, layer, m, "sign-magnitude") == first
    assert {k[0] for k in activity._CACHE} == {str(other.profiles_npz.resolve())}
