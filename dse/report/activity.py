"""Data-dependent energy of a run: the toggle-based estimate (`dse.hardware.activity`) per [layer ×
multiplier used on the front], on the layer profiles' operand streams (weight-stationary order). Read by
`dse analyze`, the report's per-layer table and the configuration JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dse.errors.profiles import LayerProfiles
from dse.hardware.activity import POSITIONS, activities, operand_streams
from dse.multipliers.core import Multiplier
from dse.rundir import RunDir
from dse.util import UserError


@dataclass(frozen=True)
class ToggleEntry:
    """One multiplier on one layer: static (gate-count) vs toggle-based energy, both relative to exact."""

    layer: str
    macs: int
    multiplier: str
    static_energy_rel: float
    toggle_energy_rel: float | None  # None: no circuit (closed-form family or imported table)
    switched_per_op: float | None  # gate-cost units switched per multiplication
    exact_switched_per_op: float

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class ToggleTable:
    weight_scheme: str
    positions: int  # multiplier positions sampled per layer
    entries: tuple[ToggleEntry, ...]

    def get(self, layer: str, multiplier: str) -> ToggleEntry | None:
        for e in self.entries:
            if e.layer == layer and e.multiplier == multiplier:
                return e
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "weight_scheme": self.weight_scheme,
            "positions_per_layer": self.positions,
            "order": "weight-stationary: each multiplier holds one weight, the sampled im2col rows stream past",
            "entries": [e.to_json() for e in self.entries],
        }


_STREAMS: dict[tuple[str, float, str], tuple[dict[str, int], dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
_CACHE: dict[tuple[str, float, str, str], dict[str, float | None]] = {}


def _streams(
    run_dir: Path, weight_scheme: str
) -> tuple[dict[str, int], dict[str, tuple[np.ndarray, np.ndarray]]] | None:
    """({layer: MACs}, {layer: weight-stationary operand streams}) of the run's profiles, read once per
    process and profiles file; None when the run has no profiles yet."""
    path = RunDir(Path(run_dir)).profiles_npz
    if not path.is_file():
        return None
    key = (str(path.resolve()), path.stat().st_mtime, weight_scheme)
    if key not in _STREAMS:
        profiles = LayerProfiles.load(path)
        macs = {p.name: int(p.macs) for p in profiles.layers}
        streams = {p.name: operand_streams(p.rows, p.weights, weight_scheme) for p in profiles.layers}
        _STREAMS.clear()  # one run at a time
        _STREAMS[key] = (macs, streams)
    return _STREAMS[key]


def toggle_table(
    run_dir: Path, mults: Iterable[Multiplier], weight_scheme: str, layers: Iterable[str] | None = None
) -> ToggleTable:
    """The toggle-based energy of each multiplier of `mults` on each profiled layer of the run."""
    got = _streams(run_dir, weight_scheme)
    if got is None:
        path = RunDir(Path(run_dir)).profiles_npz
        raise UserError(f"{path}: no layer profiles yet (run `dse search` or `dse analyze` first)")
    macs, streams = got
    if layers is not None:
        wanted = set(layers)
        streams = {k: v for k, v in streams.items() if k in wanted}
    mults = list(mults)
    act = activities(mults, streams)
    entries = []
    for layer in streams:
        exact_sw = next(
            (a.exact_switched_per_op for (lay, _), a in act.items() if lay == layer and a is not None),
            float("nan"),
        )
        for m in mults:
            a = act[layer, m.name]
            entries.append(
                ToggleEntry(
                    layer,
                    macs[layer],
                    m.name,
                    float(m.energy_rel),
                    None if a is None else a.toggle_energy_rel,
                    None if a is None else a.switched_per_op,
                    float(exact_sw),
                )
            )
    return ToggleTable(weight_scheme, POSITIONS, tuple(entries))


def weight_scheme_of(space: Mapping[str, Any]) -> str:
    """The run's weight scheme (search space), `symmetric` for the signed format."""
    scheme = space.get("weight_scheme")
    if scheme:
        return str(scheme)
    return "symmetric" if space.get("format") == "signed" else "sign-magnitude"


def toggle_energy(run_dir: Path, layer: str, m: Multiplier, weight_scheme: str) -> float | None:
    """One layer's toggle-based energy_rel for `m` (None: no profiles or no circuit). Memoised: the first
    call for a multiplier computes every layer of the run, so a report's many points cost little."""
    path = RunDir(Path(run_dir)).profiles_npz
    if not path.is_file():
        return None
    key = (str(path.resolve()), path.stat().st_mtime, m.sha256, weight_scheme)
    if key not in _CACHE:
        for other in [k for k in _CACHE if k[:2] != key[:2]]:
            del _CACHE[other]  # one run's profiles at a time, like _STREAMS: a long process stays small
        table = toggle_table(run_dir, [m], weight_scheme)
        _CACHE[key] = {e.layer: e.toggle_energy_rel for e in table.entries}
    return _CACHE[key].get(layer)


def front_toggle_table(run_dir: Path) -> ToggleTable:
    """The toggle table of every multiplier any front point of the run uses, on every layer."""
    from dse.multipliers.library import load_library
    from dse.nn.compensation import split_variant
    from dse.report.results import read_results

    run = read_results(Path(run_dir))
    names: list[str] = []
    for p in run.summary.front:
        for n in p.assignment.values():
            n = split_variant(n)[0]  # a remedy ("NAME+bc") keeps NAME's circuit
            if n not in names:
                names.append(n)
    if not names:
        raise UserError(f"{RunDir(Path(run_dir)).summary_json}: front: empty (no search result yet)")
    lib = load_library()
    return toggle_table(run_dir, [lib.get(n) for n in names], weight_scheme_of(run.search_space))


def toggle_lines(table: ToggleTable) -> list[str]:
    """The human table: per layer, each front multiplier's static vs toggle-based energy_rel."""
    lines = [
        f"data-dependent energy ({table.weight_scheme}, weight-stationary, {table.positions} multipliers "
        "per layer): energy_rel static (gate count) vs toggle (switching activity), both vs exact"
    ]
    layer = None
    for e in table.entries:
        if e.layer != layer:
            layer = e.layer
            lines.append(f"{layer} (MACs {e.macs}, exact switches {e.exact_switched_per_op:.1f} units/op)")
            lines.append(f"  {'multiplier':<20} {'static':>8} {'toggle':>8} {'toggle/static':>14}")
        t = "-" if e.toggle_energy_rel is None else f"{e.toggle_energy_rel:.3f}"
        r = "-" if e.toggle_energy_rel is None else f"{e.toggle_energy_rel / e.static_energy_rel:.2f}"
        lines.append(f"  {e.multiplier:<20} {e.static_energy_rel:8.3f} {t:>8} {r:>14}")
    return lines
