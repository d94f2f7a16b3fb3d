"""The per-layer configuration JSON (the file `dse export` writes, `dse evaluate` and `dse retrain` read):
its JSON Schema (`config.schema.json`, shipped beside this module), validation on write and on read, its
one serialisation, and `read_assignment`, the one reader of a {layer: multiplier} assignment from a file.

`resolve_assignment(assignment, prepared)` is the one resolver: names -> `Multiplier`s of the run's
library, checked against the prepared model's layers and operand format. A name may carry a remedy's
suffix ("NAME+bc" bias compensation, "NAME+wt" weight tuning; `dse.nn.compensation.remedies_of` reads
them): a configuration layer with a `compensation` object reads back as that name (`layer_choice`).

`config_text(config)` is the one serialisation: `dse export` writes it and the report embeds it for its
download button, so the two files are byte-identical. Building a configuration from a run's point is the
report's job (`dse.report.config.build_config`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dse.multipliers.core import Multiplier
from dse.util import UserError, atomic_write_text, dumps_json, read_json

if TYPE_CHECKING:
    from dse.prepare import Prepared

SCHEMA_VERSION = 3
# 2 added per-layer synth_area_rel / toggle_energy_rel; 3 the per-layer compensation (bias / weights)
READABLE_VERSIONS = (1, 2, 3)


@cache
def config_schema() -> dict[str, Any]:
    """The JSON Schema shipped as `dse/hwconfig/config.schema.json`."""
    schema: dict[str, Any] = json.loads(
        resources.files("dse.hwconfig").joinpath("config.schema.json").read_text()
    )
    return schema


def _field_path(error: Any) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def validate_config(config: Any, where: str = "config") -> None:
    """UserError naming the first offending field when `config` does not follow the schema."""
    import jsonschema  # type: ignore[import-untyped]  # no stubs installed (types-jsonschema)

    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        e = errors[0]
        message = e.message if len(e.message) < 200 else e.message[:200] + "…"
        raise UserError(f"{where}: {_field_path(e)}: {message} (schema_version {SCHEMA_VERSION})")


def config_text(config: dict[str, Any]) -> str:
    """The file text of a configuration (what `dse export` writes and the report's button downloads)."""
    return dumps_json(config, indent=2) + "\n"


def write_config(path: Path, config: dict[str, Any]) -> None:
    validate_config(config, where=str(path))
    atomic_write_text(Path(path), config_text(config))


def read_config(path: Path) -> dict[str, Any]:
    """A configuration file, validated against the schema (UserError naming the field otherwise)."""
    raw = read_json(Path(path), "configuration JSON")
    if isinstance(raw, dict) and "schema_version" in raw and raw["schema_version"] not in READABLE_VERSIONS:
        raise UserError(
            f"{path}: schema_version: this dse reads version {SCHEMA_VERSION}, the file has {raw['schema_version']!r}"
        )
    validate_config(raw, where=str(path))
    config: dict[str, Any] = raw
    return config


def read_assignment(path: Path, *, complete: bool = True) -> dict[str, str]:
    """{layer name: multiplier name} from a configuration file or a plain JSON object mapping layer names
    to multiplier names.

    `complete=True` (`dse evaluate`, `dse export`'s readers): a file with a `schema_version` must be a
    complete configuration (validated; UserError naming the field). `complete=False` (`dse retrain`): a
    configuration that does not validate, or has no `schema_version`, is read by the minimal shape every
    reader may rely on, `{"layers": [{"name", "multiplier"}, …]}`."""
    path = Path(path)
    raw = read_json(path, "configuration JSON")
    if isinstance(raw, dict) and "schema_version" in raw:
        try:
            config = read_config(path)
            return {layer["name"]: layer_choice(layer) for layer in config["layers"]}
        except UserError:
            if complete:
                raise
    if not complete and isinstance(raw, dict) and isinstance(raw.get("layers"), list):
        try:
            return {str(e["name"]): layer_choice(e) for e in raw["layers"]}
        except (KeyError, TypeError):
            raise UserError(f"{path}: layers: expected a list of {{'name', 'multiplier'}} objects") from None
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


def layer_choice(layer: Mapping[str, Any]) -> str:
    """A configuration layer's assignment name: its multiplier, with the remedy's suffix when it carries a
    compensation ("NAME+bc" / "NAME+wt", dse.nn.compensation)."""
    from dse.nn.compensation import variant_name

    comp = layer.get("compensation")
    return variant_name(str(layer["multiplier"]), comp["remedy"] if isinstance(comp, dict) else None)


def read_assignment_file(path: Path) -> tuple[dict[str, str], Any]:
    """(`read_assignment(path, complete=False)`, the file's raw JSON): what `dse retrain` reads; the raw
    JSON may name the model the configuration was made for (`resolve_assignment`'s `raw`)."""
    return read_assignment(path, complete=False), read_json(Path(path), "configuration JSON")


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
    from dse.nn.compensation import split_variant

    signed = bool(prepared.fmt.signed)
    out = {}
    for layer, name in assignment.items():
        mult_name = split_variant(name)[0]  # "NAME+bc" / "NAME+wt": the remedy is the caller's (remedies_of)
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
