"""Data-dependent energy of a run: the toggle-based estimate (`dse.hardware.activity`) per [layer ×
multiplier used on the front], on the layer profiles' operand streams (weight-stationary order). Read by
`dse analyze`, the report's per-layer table and the configuration JSON."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dse.errors.profiles import LayerProfiles
from dse.hardware.activity import POSITIONS, layer_activity
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


def toggle_table(
    run_dir: Path, mults: Iterable[Multiplier], weight_scheme: str, layers: Iterable[str] | None = None
) -> ToggleTable:
    """The toggle-based energy of each multiplier of `mults` on each profiled layer of the run."""
    path = RunDir(Path(run_dir)).profiles_npz
    if not path.is_file():
        raise UserError(f"{path}: no layer profiles yet (run `dse search` or `dse analyze` first)")
    profiles = LayerProfiles.load(path)
    wanted = None if layers is None else set(layers)
    mults = list(mults)
    entries = []
    for p in profiles.layers:
        if wanted is not None and p.name not in wanted:
            continue
        act = layer_activity(mults, p.rows, p.weights, weight_scheme)
        exact_sw = next((a.exact_switched_per_op for a in act.values() if a is not None), float("nan"))
        for m in mults:
            a = act[m.name]
            entries.append(
                ToggleEntry(
                    p.name,
                    int(p.macs),
                    m.name,
                    float(m.energy_rel),
                    None if a is None else a.toggle_energy_rel,
                    None if a is None else a.switched_per_op,
                    float(exact_sw),
                )
            )
    return ToggleTable(weight_scheme, POSITIONS, tuple(entries))


_CACHE: dict[tuple[str, float, str, str, str], float | None] = {}


def weight_scheme_of(space: dict[str, Any] | Any) -> str:
    """The run's weight scheme (search space), `symmetric` for the signed format."""
    scheme = space.get("weight_scheme") if hasattr(space, "get") else None
    if scheme:
        return str(scheme)
    return (
        "symmetric"
        if (space.get("format") if hasattr(space, "get") else None) == "signed"
        else "sign-magnitude"
    )


def toggle_energy(run_dir: Path, layer: str, m: Multiplier, weight_scheme: str) -> float | None:
    """One layer's toggle-based energy_rel for `m` (None: no profiles or no circuit); memoised per
    (profiles file, layer, multiplier) in the process, so a report's many points cost one simulation each."""
    path = RunDir(Path(run_dir)).profiles_npz
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime, layer, m.sha256, weight_scheme)
    if key not in _CACHE:
        table = toggle_table(run_dir, [m], weight_scheme, [layer])
        e = table.get(layer, m.name)
        _CACHE[key] = None if e is None else e.toggle_energy_rel
    return _CACHE[key]


def front_toggle_table(run_dir: Path) -> ToggleTable:
    """The toggle table of every multiplier any front point of the run uses, on every layer."""
    from dse.multipliers.library import load_library
    from dse.report.results import read_results

    run = read_results(Path(run_dir))
    names: list[str] = []
    for p in run.summary.front:
        for n in p.assignment.values():
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
