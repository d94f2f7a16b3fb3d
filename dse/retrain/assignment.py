"""The assignment that `dse retrain` retrains for: read from a configuration JSON and checked against the
prepared run (its layers, its library, its operand format)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dse.hwconfig import read_assignment
from dse.multipliers.core import Multiplier
from dse.prepare import Prepared
from dse.util import UserError, read_json


def read_assignment_file(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """({layer: multiplier}, the raw JSON) from a configuration JSON (`dse export`), the minimal shape
    `{"layers": [{"name", "multiplier"}, ...]}` (docs/ARCHITECTURE.md), or a plain {layer: multiplier} object.

    A file with a `schema_version` is read by the configuration reader (validated) when it is a complete
    exported configuration; otherwise its minimal shape is enough here."""
    path = Path(path)
    raw = read_json(path, "configuration JSON")
    if isinstance(raw, dict) and isinstance(raw.get("layers"), list):
        if "schema_version" in raw:
            try:
                return read_assignment(path), raw
            except UserError:
                pass  # not a complete exported configuration: the minimal shape is enough here
        try:
            return {str(e["name"]): str(e["multiplier"]) for e in raw["layers"]}, raw
        except (KeyError, TypeError):
            raise UserError(f"{path}: layers: expected a list of {{'name', 'multiplier'}} objects") from None
    if (
        isinstance(raw, dict)
        and raw
        and all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items())
    ):
        return dict(raw), raw
    raise UserError(f'{path}: expected a dse configuration or a non-empty object {{"layer": "multiplier"}}')


def resolve_assignment(
    assignment: Mapping[str, str],
    prepared: Prepared,
    where: str = "config",
    raw: Mapping[str, Any] | None = None,
) -> dict[str, Multiplier]:
    """{layer: Multiplier} checked against the prepared model and the library (UserError otherwise);
    `raw` (the configuration JSON) may name the model it was made for, which must be this run's."""
    names = [info.name for info in prepared.layers]
    unknown = [name for name in assignment if name not in names]
    model_name = prepared.study.model.name
    cfg_model = None
    if raw and isinstance(raw.get("model"), dict):
        cfg_model = raw["model"].get("name")
    if unknown or (cfg_model not in (None, "unknown", model_name)):
        missing = [n for n in names if n not in assignment]
        other = f" (it names model {cfg_model!r}, this run is {model_name!r})" if cfg_model else ""
        raise UserError(
            f"{where}: configuration does not fit this model{other}: layers not in the model: "
            f"{', '.join(unknown) or '-'}; model layers not in the configuration: {', '.join(missing) or '-'}"
            f" (the model's layers are {', '.join(names)})"
        )
    signed = bool(prepared.fmt.signed)
    out = {}
    for layer, mult_name in assignment.items():
        try:
            m = prepared.library.get(mult_name)
        except UserError:
            raise UserError(
                f"{where}: layer {layer}: multiplier {mult_name!r} is not in the library "
                "(see `dse multipliers list`)"
            ) from None
        if bool(m.signed) != signed:
            fmt = "signed" if signed else "unsigned"
            raise UserError(
                f"{where}: layer {layer}: multiplier {mult_name!r} is not {fmt} like this run's format"
            )
        out[layer] = m
    return out
