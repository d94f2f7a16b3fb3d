"""The per-layer configuration JSON: built from a run's point, validated against the shipped JSON Schema
on write and on read, and read back as a plain {layer: multiplier} assignment by anyone who needs one.

`config_text(config)` is the one serialisation: `dse export` writes it and the report embeds it for its
download button, so the two files are byte-identical.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from dse import __version__
from dse.energy import mac_shares
from dse.util import UserError, atomic_write_text, dumps_json, read_json

SCHEMA_VERSION = 1


@cache
def config_schema() -> dict[str, Any]:
    """The JSON Schema shipped as `dse/report/config.schema.json`."""
    return json.loads(resources.files("dse.report").joinpath("config.schema.json").read_text())


def _field_path(error) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def validate_config(config: Any, where: str = "config") -> None:
    """UserError naming the first offending field when `config` does not follow the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        e = errors[0]
        message = e.message if len(e.message) < 200 else e.message[:200] + "…"
        raise UserError(f"{where}: {_field_path(e)}: {message} (schema_version {SCHEMA_VERSION})")


def build_config(run, point: dict[str, Any], library) -> dict[str, Any]:
    """The configuration of one point of a run (`run`: `dse.report.run.RunData`; `library`: anything with
    `.get(name) -> Multiplier`). Deterministic: the same run and point give the same JSON."""
    layers = run.layers
    assignment = point.get("assignment") or {}
    names = [layer["name"] for layer in layers]
    unknown = sorted(set(assignment) - set(names))
    if unknown:
        raise UserError(
            f"{run.run_dir / 'summary.json'}: point {point.get('trial')}: unknown layers {unknown}"
        )
    macs = {layer["name"]: int(layer["macs"]) for layer in layers}
    shares = mac_shares(macs)
    mults = {name: library.get(assignment.get(name) or _exact_name(run, library)) for name in names}
    energy = {name: shares[name] * mults[name].energy_rel for name in names}
    total_energy = sum(energy.values())
    agn = run.tolerance_for(point)
    qparams = run.quant_params or {}
    out_layers = []
    for layer in layers:
        name = layer["name"]
        m = mults[name]
        sigma, mean = run.predictions.get(name, m.name) if run.predictions else (None, None)
        out_layers.append(
            {
                "name": name,
                "multiplier": m.name,
                "kind": layer.get("kind", "conv"),
                "shape": [int(s) for s in layer.get("weight_shape") or []],
                "fan_in": layer.get("fan_in"),
                "macs": macs[name],
                "mac_share": shares[name],
                "source": m.source,
                "signed": bool(m.signed),
                "lut_sha256": m.sha256,
                "energy_rel": float(m.energy_rel),
                "energy_share": energy[name] / total_energy if total_energy > 0 else 0.0,
                "predicted_sigma": _num(sigma),
                "predicted_mean": _num(mean),
                "tolerance": _num(agn.tolerance.get(name)) if agn else None,
                "quant": qparams.get(name),
            }
        )
    study, summary = run.study, run.summary
    space = _search_space(run)
    signed = next(iter(mults.values())).signed
    acc = point.get("accuracy")
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
            "energy_rel": float(point["energy_rel"]),
            "energy_saving": 1.0 - float(point["energy_rel"]),
            "accuracy": acc,
            "test_accuracy": point.get("test_accuracy"),
            "quant_accuracy": summary.get("quant_accuracy"),
            "quant_test_accuracy": summary.get("quant_test_accuracy"),
            "predicted_accuracy": point.get("predicted_accuracy"),
        },
        "provenance": {
            "dse_version": __version__,
            "study": run.study_name,
            "trial": point.get("trial"),
            "origin": point.get("origin"),
            "run_dir": str(run.run_dir),
            "time": run.summary_time,
            "tolerance_lambda": agn.lam if agn else None,
        },
    }
    validate_config(config, where=f"configuration of trial {point.get('trial')}")
    return config


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def _search_space(run) -> dict[str, Any]:
    space = run.study.get("search_space")
    return space if isinstance(space, dict) else run.search_space


def _exact_name(run, library) -> str:
    space = _search_space(run)
    return "exact_s8" if space.get("format") == "signed" else "exact_u8"


def config_text(config: dict[str, Any]) -> str:
    """The file text of a configuration (what `dse export` writes and the report's button downloads)."""
    return dumps_json(config, indent=2) + "\n"


def write_config(path: Path, config: dict[str, Any]) -> None:
    validate_config(config, where=str(path))
    atomic_write_text(Path(path), config_text(config))


def read_config(path: Path) -> dict[str, Any]:
    """A configuration file, validated against the schema (UserError naming the field otherwise)."""
    raw = read_json(Path(path), "configuration JSON")
    if isinstance(raw, dict) and "schema_version" in raw and raw["schema_version"] != SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema_version: this dse reads version {SCHEMA_VERSION}, the file has {raw['schema_version']!r}"
        )
    validate_config(raw, where=str(path))
    return raw


def read_assignment(path: Path) -> dict[str, str]:
    """{layer name: multiplier name} from a configuration file (validated) or a plain JSON object
    mapping layer names to multiplier names."""
    raw = read_json(Path(path), "configuration JSON")
    if isinstance(raw, dict) and "schema_version" in raw:
        config = read_config(path)
        return {layer["name"]: layer["multiplier"] for layer in config["layers"]}
    if (
        isinstance(raw, dict)
        and raw
        and all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items())
    ):
        return dict(raw)
    raise UserError(
        f"{path}: expected a dse configuration (schema_version {SCHEMA_VERSION}) or a non-empty object "
        '{"layer name": "multiplier name", …}'
    )
