"""A search space's energy objective: `energy = "gates"` (default, the gate model) or `"synth"` (yosys)."""

from __future__ import annotations

import pytest

from dse.multipliers.library import load_library
from dse.study import load_search_space
from dse.util import UserError


def _space(tmp_path, energy_line, patterns='["exact_u8", "trunc8_u8", "bam_h2_v6_u8"]'):
    p = tmp_path / "s.toml"
    p.write_text(
        f'name = "x"\nformat = "unsigned"\nweight_scheme = "sign-magnitude"\nmultipliers = {patterns}\n'
        + energy_line
    )
    return load_search_space(p)


def test_synth_energy_is_the_synthesized_area(tmp_path):
    lib = load_library(tmp_path / "lib")
    gates = {m.name: m for m in _space(tmp_path, "").resolve(lib)}
    synth = {m.name: m for m in _space(tmp_path, 'energy = "synth"\n').resolve(lib)}
    for name, m in synth.items():
        assert m.energy_rel == lib.get(name).synth_area_rel
        assert gates[name].energy_rel == lib.get(name).energy_rel
        assert m.energy_method.startswith("synth:")
    assert synth["exact_u8"].energy_rel == 1.0
    assert synth["trunc8_u8"].energy_rel != gates["trunc8_u8"].energy_rel


def test_synth_energy_refuses_designs_without_a_circuit(tmp_path):
    lib = load_library(tmp_path / "lib")
    space = _space(tmp_path, 'energy = "synth"\n', '["exact_u8", "drum4_u8"]')
    with pytest.raises(UserError, match='energy = "synth": drum4_u8 has no synthesized cost'):
        space.resolve(lib)
    with pytest.raises(UserError, match="energy"):
        _space(tmp_path, 'energy = "power"\n')
