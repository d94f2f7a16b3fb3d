"""`dse evaluate`: rebuild a run's prepared model, apply a configuration's per-layer multipliers (each
table checked against the library by sha256, the layers against the model) and remedies (each stored
bias correction / weight map checked against the model's channels and the run's calibration) and
re-measure its accuracy by behavioural simulation — `dse.simulation.simulate_accuracy`, the same lut-mode
path as the search's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dse.data import Split
from dse.energy import energy_rel
from dse.hwconfig import read_assignment, read_config, resolve_assignment
from dse.multipliers.core import Multiplier
from dse.nn.compensation import remedies_of, variant_name
from dse.prepare import load_prepared
from dse.prepare.records import PreparedLayer
from dse.rundir import RunDir
from dse.search.records import Summary
from dse.simulation import simulate_accuracy
from dse.util import UserError, read_json


def _recorded_from_summary(run_dir: Path, assignment: dict[str, str], split: str) -> float | None:
    """The accuracy the search recorded for this exact assignment, if it simulated it."""
    path = RunDir(run_dir).summary_json
    if not path.is_file():
        return None
    try:
        summary = Summary.from_json(read_json(path, "search summary"), where=str(path))
    except UserError:
        return None
    groups = [summary.points, summary.front] + [b.points for b in summary.baselines.values()]
    for points in groups:
        for p in points:
            value = p.accuracy if split == "val" else p.test_accuracy
            if dict(p.assignment) == assignment and value is not None:
                return float(value)
    return None


def _check_compensation(
    path: Path, config: dict[str, Any], prepared: Any, chosen: dict[str, Multiplier]
) -> None:
    """Each compensated layer's stored correction against the model: one value per output channel, equal to
    the correction the run's calibration gives (what the simulation then applies)."""
    from dse.nn import approx_layers
    from dse.simulation import ensure_calibration

    layers = approx_layers(prepared.model)
    entries = [(i, e) for i, e in enumerate(config["layers"]) if isinstance(e.get("compensation"), dict)]
    for i, entry in entries:  # the shape first: no calibration needed to refuse it
        comp, layer = entry["compensation"], layers[entry["name"]]
        for key in ("acc_correction", "float_bias") if comp["remedy"] == "bias" else ():
            if len(comp[key]) != layer.out_channels:
                raise UserError(
                    f"{path}: layers[{i}].compensation.{key}: {len(comp[key])} values, but the model's "
                    f"{entry['name']} has {layer.out_channels} output channels"
                )
    ensure_calibration(prepared)
    for i, entry in entries:
        comp, layer, m = entry["compensation"], layers[entry["name"]], chosen[entry["name"]]
        where = f"{path}: layers[{i}].compensation"
        if comp["remedy"] == "bias":
            if [int(v) for v in layer.bias_correction(m).tolist()] != comp["acc_correction"]:
                raise UserError(
                    f"{where}.acc_correction: does not match the correction of this run's weights and "
                    "calibration images (a configuration of another run or checkpoint?)"
                )
        elif [int(v) for v in layer.weight_map(m).tolist()] != comp["weight_map"]:
            raise UserError(
                f"{where}.weight_map: does not match the weight tuning of this run's calibration images"
            )


def evaluate_config(
    path: Path,
    run_dir: Path | None = None,
    data: Path | None = None,
    device: str = "cpu",
    split: str = "val",
    rest: str | None = None,
) -> dict[str, Any]:
    """Re-measure a configuration file (or a plain {layer: multiplier} JSON object with `run_dir`).
    A plain object must name every layer, or `rest="exact"` runs the layers it does not name exact.
    Returns {"accuracy", "energy_rel", "matches_recorded", "recorded_accuracy", "split", "run_dir", …}."""
    if rest not in (None, "exact"):
        raise UserError(f"--rest {rest}: expected exact")
    path = Path(path)
    raw = read_json(path, "configuration JSON")
    config = read_config(path) if isinstance(raw, dict) and "schema_version" in raw else None
    assignment = read_assignment(path)
    if run_dir is None:
        if config is None or not config["provenance"].get("run_dir"):
            raise UserError(
                f"{path}: names no run directory (a plain layer→multiplier object); give --run RUN_DIR"
            )
        run_dir = Path(config["provenance"]["run_dir"])
        if not run_dir.is_dir():
            raise UserError(
                f"{path}: provenance.run_dir: {run_dir} not found; give the run directory with --run DIR"
            )
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir}: run directory not found")

    prepared = load_prepared(run_dir, data=data, device=device)
    names = [info.name for info in prepared.layers]
    macs = {info.name: PreparedLayer.of(info).macs for info in prepared.layers}
    unknown = [n for n in assignment if n not in macs]
    missing = [n for n in names if n not in assignment]
    what = "layers" if config is not None else "keys"
    if unknown:
        raise UserError(
            f"{path}: {what}: do not match the model of {run_dir}: {', '.join(unknown)} "
            f"{'is' if len(unknown) == 1 else 'are'} not among its layers ({', '.join(names)})"
        )
    if missing and (config is not None or rest != "exact"):
        fix = (
            ""
            if config is not None
            else "; name them, or pass --rest exact to run them with the exact multiplier"
        )
        raise UserError(
            f"{path}: {what}: do not match the model of {run_dir}: layers missing from the file: "
            f"{', '.join(missing)}{fix}"
        )
    chosen: dict[str, Multiplier] = {}
    if missing:  # --rest exact: the unnamed layers on the exact multiplier of the run's format
        exact = next(m for m in prepared.library.multipliers(signed=bool(prepared.fmt.signed)) if m.is_exact)
        assignment = {n: assignment.get(n, exact.name) for n in names}
    remedies = remedies_of(assignment)[1]
    for i, name in enumerate(names):
        if name in assignment:
            where = f"{path}: layers[{i}].multiplier" if config is not None else f"{path}: {name}"
            chosen.update(resolve_assignment({name: assignment[name]}, prepared, where=where))
    if config is not None:
        for i, layer in enumerate(config["layers"]):
            m = chosen[layer["name"]]
            if layer["lut_sha256"] != m.sha256:
                raise UserError(
                    f"{path}: layers[{i}].lut_sha256: {layer['lut_sha256'][:12]}… does not match the library's "
                    f"{m.name} ({m.sha256[:12]}…): the table under that name changed"
                )
            if int(layer["macs"]) != macs[layer["name"]]:
                raise UserError(
                    f"{path}: layers[{i}].macs: {layer['macs']} but the model's {layer['name']} has {macs[layer['name']]}"
                )
        if remedies:
            _check_compensation(path, config, prepared, chosen)
    dataset = prepared.splits[Split(split)]
    accuracy = simulate_accuracy(prepared, chosen, Split(split), remedies=remedies)
    if config is not None:
        recorded = config["totals"]["accuracy" if split == "val" else "test_accuracy"]
    else:
        recorded = _recorded_from_summary(
            run_dir, {n: variant_name(m.name, remedies.get(n)) for n, m in chosen.items()}, split
        )
    return {
        "accuracy": accuracy,
        "energy_rel": energy_rel(macs, {n: m.energy_rel for n, m in chosen.items()}),
        "matches_recorded": None if recorded is None else accuracy == float(recorded),
        "recorded_accuracy": recorded,
        "split": split,
        "samples": len(dataset),
        "run_dir": str(run_dir.resolve()),
        "assignment": {
            n: variant_name(chosen[n].name, remedies.get(n)) if n in chosen else None for n in names
        },
        "exact_rest": missing,
    }
