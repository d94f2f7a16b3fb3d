"""Synthesized cost: `yosys` maps each built-in circuit to a fixed generic cell set and counts the cells.

Script (`SCRIPT`, one design per run): `read_verilog design.v; synth -flatten -top NAME;
abc -g AND,NAND,OR,NOR,XOR,XNOR; opt_clean; stat -json`. `synth` is yosys' generic flow (coarse and fine
optimisation, ABC technology mapping); `abc -g` re-maps the result onto two-input AND/NAND/OR/NOR/XOR/XNOR
gates plus inverters (`$_NOT_`), the same cell set as ariths-gen's gate list. Area units per cell are the
gate model's (`dse.multipliers.energy_model.GATE_COST`, NanGate45 X1 areas normalised to AND2_X1), so
`synth_area_rel` and the gate-count `energy_rel` differ only by what synthesis changes: logic it removes
(constant or unobservable gates), restructures, or shares. `synth_area_rel` is relative to the exact
multiplier of the same format (exact_u8 = the ariths-gen array; exact_s8 = its sign-magnitude wrapper).

The figures of the built-in library are computed once and shipped as `dse/multipliers/synth.json`
(read by `dse.multipliers.builtin`); regenerate it with `python -m dse.hardware.synth` (about a minute:
one yosys run per design). Each entry carries the design's LUT sha256, so a stale entry is ignored.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dse.hardware.tools import require, run_tool
from dse.hardware.verilog import has_circuit, verilog
from dse.multipliers.core import Multiplier
from dse.multipliers.energy_model import GATE_COST
from dse.util import UserError, atomic_write_text, dumps_json

CELL_SET = "AND,NAND,OR,NOR,XOR,XNOR"
SCRIPT = "read_verilog design.v; synth -flatten -top {top}; abc -g " + CELL_SET + "; opt_clean; stat -json"
CELL_COST = {f"$_{k[:-4].upper()}_": v for k, v in GATE_COST.items()}  # "$_AND_": 1.0, …
DATA_FILE = Path(__file__).resolve().parents[1] / "multipliers" / "synth.json"


@dataclass(frozen=True)
class Synthesis:
    """yosys' result for one design: cell counts by type and their area in gate-model units."""

    name: str
    cells: int
    by_type: dict[str, int]
    area: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "cells": self.cells, "by_type": self.by_type, "area": self.area}


def yosys_version() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return run_tool(["yosys", "-V"], Path(tmp)).strip()


def synthesize_verilog(design: str, top: str) -> Synthesis:
    """Synthesize Verilog text `design` (top module `top`) with `SCRIPT`."""
    require("yosys")
    with tempfile.TemporaryDirectory(prefix="dse-yosys-") as tmp:
        d = Path(tmp)
        (d / "design.v").write_text(design)
        script = SCRIPT.format(top=top).replace("stat -json", "tee -q -o stat.json stat -json")
        run_tool(["yosys", "-q", "-p", script], d)
        stat = json.loads((d / "stat.json").read_text())
    by_type = {str(k): int(v) for k, v in stat["design"]["num_cells_by_type"].items()}
    unknown = sorted(set(by_type) - set(CELL_COST))
    if unknown:
        raise UserError(f"yosys mapped {top} to cells outside the cell set: {', '.join(unknown)}")
    area = sum(CELL_COST[k] * n for k, n in by_type.items())
    return Synthesis(top, int(stat["design"]["num_cells"]), by_type, float(area))


def synthesize(m: Multiplier) -> Synthesis:
    design = verilog(m)
    if design is None:
        raise UserError(f"{m.name}: no circuit to synthesize (closed-form or imported table; no Verilog)")
    return synthesize_verilog(design, m.name)


def library_synthesis(mults: list[Multiplier]) -> dict[str, Any]:
    """The `synth.json` document for the circuit multipliers among `mults` (the exact ones included)."""
    designs: dict[str, Any] = {}
    results = {m.name: synthesize(m) for m in mults if has_circuit(m)}
    exact = {False: results["exact_u8"].area, True: results["exact_s8"].area}
    for m in mults:
        if m.name in results:
            s = results[m.name]
            designs[m.name] = {
                "lut_sha256": m.sha256,
                "cells": s.cells,
                "area": s.area,
                "area_rel": round(s.area / exact[m.signed], 6),
                "by_type": s.by_type,
            }
    return {
        "generated_by": "python -m dse.hardware.synth",
        "tool": yosys_version(),
        "script": SCRIPT,
        "cell_cost": CELL_COST,
        "designs": designs,
    }


def main(argv: list[str] | None = None) -> int:
    """Regenerate `dse/multipliers/synth.json` (or write to the path given as the one argument)."""
    from dse.multipliers.builtin import builtin_multipliers

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DATA_FILE
    doc = library_synthesis(builtin_multipliers())
    atomic_write_text(out, dumps_json(doc) + "\n")
    print(f"{out}: {len(doc['designs'])} designs synthesized ({doc['tool']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
