"""The configuration JSON of one point of a run (the file format itself, its schema and its readers are
`dse.hwconfig`): the point's multipliers with their tables' sha256, energy shares, predicted σ / mean and
learned tolerances, the quantization parameters, totals and provenance."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Protocol

from dse import __version__
from dse.energy import mac_shares
from dse.hwconfig import SCHEMA_VERSION, validate_config
from dse.multipliers.core import Multiplier
from dse.nn.compensation import RemedyLayer, remedies_of, remedy_json
from dse.report.activity import toggle_energy, weight_scheme_of
from dse.report.results import RunResults
from dse.rundir import RunDir
from dse.search.records import SearchPoint
from dse.study import energy_objective
from dse.util import UserError


class MultiplierSource(Protocol):
    """What build_config needs of a library: a multiplier by name (UserError when unknown)."""

    def get(self, name: str) -> Multiplier: ...


def build_config(run: RunResults, point: SearchPoint, library: MultiplierSource) -> dict[str, Any]:
    """The configuration of one point of a run. Deterministic: the same run and point give the same JSON."""
    layers = run.layers
    assignment = point.assignment
    names = [layer.name for layer in layers]
    unknown = sorted(set(assignment) - set(names))
    if unknown:
        raise UserError(f"{RunDir(run.run_dir).summary_json}: point {point.trial}: unknown layers {unknown}")
    macs = {layer.name: int(layer.macs) for layer in layers}
    shares = mac_shares(macs)
    objective = str(run.search_space.get("energy", "gates"))  # the space's energy objective
    bases, remedies = remedies_of({name: assignment.get(name) or _exact_name(run) for name in names})
    mults = {name: energy_objective(library.get(bases[name]), objective) for name in names}
    remedy_layers = _remedy_layers(run.run_dir) if remedies else {}
    energy = {name: shares[name] * mults[name].energy_rel for name in names}
    total_energy = sum(energy.values())
    agn = run.tolerance_for(point)
    qparams = run.quant_params or {}
    scheme = weight_scheme_of(run.search_space)
    out_layers = []
    for layer in layers:
        name = layer.name
        m = mults[name]
        sigma, mean = run.predicted(name, m.name)
        out_layers.append(
            {
                "name": name,
                "multiplier": m.name,
                "kind": layer.kind,
                "shape": [int(s) for s in layer.weight_shape],
                "fan_in": layer.fan_in,
                "macs": macs[name],
                "mac_share": shares[name],
                "source": m.source,
                "signed": bool(m.signed),
                "lut_sha256": m.sha256,
                "energy_rel": float(m.energy_rel),
                "energy_share": energy[name] / total_energy if total_energy > 0 else 0.0,
                "predicted_sigma": _num(sigma),
                "predicted_mean": _num(mean),
                "tolerance": _magnitude(agn.tolerance.get(name)) if agn else None,
                "quant": qparams.get(name),
                "synth_area_rel": m.synth_area_rel,
                "toggle_energy_rel": toggle_energy(run.run_dir, name, m, scheme),
                "compensation": remedy_json(remedy_layers[name], m, remedies[name])
                if name in remedies
                else None,
            }
        )
    study, summary = run.study, run.summary
    space = _search_space(run)
    signed = next(iter(mults.values())).signed
    config = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": str((study.get("model") or {}).get("name") or "unknown"),
            "checkpoint": run.checkpoint[0],
            "checkpoint_sha256": run.checkpoint[1],
        },
        "dataset": {
            "name": str((study.get("data") or {}).get("name") or "unknown"),
            "path": (study.get("data") or {}).get("path"),
            "split": "validation",
            "splits_sha256": run.splits_sha256,
        },
        "quantization": {
            "format": space.get("format") or ("signed" if signed else "unsigned"),
            "weight_scheme": space.get("weight_scheme") or ("symmetric" if signed else "sign-magnitude"),
            "per_channel": (study.get("train") or {}).get("per_channel"),
            "bits": 8,
        },
        "layers": out_layers,
        "totals": {
            "energy_rel": float(point.energy_rel),
            "energy_saving": 1.0 - float(point.energy_rel),
            "accuracy": point.accuracy,
            "test_accuracy": point.test_accuracy,
            "quant_accuracy": summary.quant_accuracy,
            "quant_test_accuracy": summary.quant_test_accuracy,
            "predicted_accuracy": point.predicted_accuracy,
        },
        "provenance": {
            "dse_version": __version__,
            "study": run.study_name,
            "trial": point.trial,
            "origin": point.origin.to_json(),
            "run_dir": str(run.run_dir),
            "time": run.summary_time,
            "tolerance_lambda": agn.lam if agn else None,
        },
    }
    validate_config(config, where=f"configuration of trial {point.trial}")
    return config


def _remedy_layers(run_dir: Path | str) -> dict[str, RemedyLayer]:
    """The run's prepared layers with their calibration histograms (what a compensated layer's correction is
    computed from), loaded once per run directory and prepared model (a re-prepared run is loaded again)."""
    run = RunDir(run_dir)
    stamp = run.qat_ckpt.stat().st_mtime_ns if run.qat_ckpt.is_file() else 0
    return _load_remedy_layers(str(Path(run_dir).resolve()), stamp)


@functools.lru_cache(maxsize=4)
def _load_remedy_layers(run_dir: str, stamp: int) -> dict[str, RemedyLayer]:
    """`_remedy_layers`' cache: a few run directories per process (`stamp`: the QAT checkpoint's mtime)."""
    from dse.nn import approx_layers
    from dse.prepare import load_prepared
    from dse.simulation import ensure_calibration

    prepared = load_prepared(Path(run_dir))
    ensure_calibration(prepared)
    return dict(approx_layers(prepared.model))


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def _magnitude(x: Any) -> float | None:
    return None if x is None else abs(float(x))


def _search_space(run: RunResults) -> dict[str, Any]:
    space = run.study.get("search_space")
    return space if isinstance(space, dict) else dict(run.search_space)


def _exact_name(run: RunResults) -> str:
    return "exact_s8" if _search_space(run).get("format") == "signed" else "exact_u8"
