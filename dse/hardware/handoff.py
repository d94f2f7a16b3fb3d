"""The hardware hand-off directory of a configuration (`dse export RUN … --hardware DIR`).

For each multiplier the configuration uses: `<name>.v` (its Verilog, built-in circuit families), or for an
imported C model `<name>.c` (the C file it came from, as kept in the user library; no Verilog), `<name>.hex`
(all 65,536 operand pairs and products, `dse.hardware.vectors`), and one `manifest.json` tying every file to
the multiplier's name, the layers that use it and the LUT sha256 of the configuration JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dse.hardware.vectors import vector_text
from dse.hardware.verilog import verilog
from dse.multipliers.core import Multiplier
from dse.util import UserError, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_bytes

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class HandoffEntry:
    """One multiplier of the hand-off and its files (names relative to the directory)."""

    name: str
    lut_sha256: str
    layers: tuple[str, ...]
    verilog: str | None
    c_model: str | None
    vectors: str
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lut_sha256": self.lut_sha256,
            "layers": list(self.layers),
            "verilog": self.verilog,
            "top_module": self.name if self.verilog else None,
            "c_model": self.c_model,
            "vectors": self.vectors,
            "note": self.note,
        }


def write_handoff(
    out: Path,
    layers: Sequence[Mapping[str, Any]],
    mults: Mapping[str, Multiplier],
    config_file: Path,
    library_dir: Path | None = None,
) -> list[HandoffEntry]:
    """Write the hand-off of a configuration's `layers` (each {"name", "multiplier", "lut_sha256"}) into
    `out`; `mults` resolves the names; the configuration's sha256 must match the library's table."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--hardware {out}: exists and is not a directory")
    used: dict[str, list[str]] = {}
    for layer in layers:
        name = str(layer["multiplier"])
        m = mults.get(name)
        if m is None:
            raise UserError(f"{config_file}: layers: multiplier {name!r} is not in the library")
        if layer.get("lut_sha256") not in (None, m.sha256):
            raise UserError(
                f"{config_file}: layer {layer['name']}: lut_sha256 differs from the library's {name}"
            )
        used.setdefault(name, []).append(str(layer["name"]))
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, layer_names in used.items():
        m = mults[name]
        design = verilog(m)
        c_model = None
        if design is not None:
            atomic_write_text(out / f"{name}.v", design)
            note = "Verilog from the ariths-gen circuit" + (
                " inside a sign-magnitude wrapper" if m.signed else ""
            )
        elif m.source == "imported" and "function" in m.params:
            src = None if library_dir is None else Path(library_dir) / f"{name}.c"
            if (
                src is not None
                and src.is_file()
                and sha256_bytes(src.read_bytes()) == m.params.get("file_sha256")
            ):
                c_model = f"{name}.c"
                atomic_write_bytes(out / c_model, src.read_bytes())
                note = (
                    f"imported C model ({m.params.get('file')}, function {m.params['function']}); no Verilog"
                )
            else:
                note = (
                    f"imported C model {m.params.get('file')}: its C file is not kept in the library "
                    "(imported before dse kept C sources; import it again to include it); no Verilog"
                )
        else:
            note = "no circuit (closed-form family or imported table): the vectors are the specification"
        atomic_write_text(out / f"{name}.hex", vector_text(m))
        entries.append(
            HandoffEntry(
                name,
                m.sha256,
                tuple(layer_names),
                f"{name}.v" if design else None,
                c_model,
                f"{name}.hex",
                note,
            )
        )
    atomic_write_json(
        out / "manifest.json",
        {
            "manifest_version": MANIFEST_VERSION,
            "config": config_file.name,
            "config_sha256": sha256_bytes(config_file.read_bytes()),
            "vectors_format": "one line per operand pair (a row-major, b column): a[47:40] b[39:32] "
            "product[31:0] in hex, int32 two's complement",
            "multipliers": [e.to_json() for e in entries],
        },
    )
    return entries
