"""The circuit is the table: simulate a multiplier's exported Verilog with Icarus Verilog (`iverilog` +
`vvp`) over all 65,536 operand pairs of its vector file and compare with the table bit for bit.

The testbench reads the vector file with `$readmemh`, applies each pair, waits one time unit (the design is
combinational), and compares the 16-bit output (zero-extended for unsigned designs, sign-extended for
signed ones) with the table's int32 product; it prints the first differing pair and the number of
mismatches.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dse.hardware.tools import require, run_tool
from dse.hardware.vectors import N_VECTORS, vector_text
from dse.hardware.verilog import verilog
from dse.multipliers.core import Multiplier
from dse.util import UserError

TESTBENCH = """\
`timescale 1ns/1ps
module tb;
  reg [47:0] mem [0:{last}];
  reg [7:0] a, b;
  wire [15:0] out;
  reg [31:0] expected, got;
  integer i, bad;
  {name} dut(.a(a), .b(b), .{name}_out(out));
  initial begin
    $readmemh("vectors.hex", mem);
    bad = 0;
    for (i = 0; i < {n}; i = i + 1) begin
      a = mem[i][47:40]; b = mem[i][39:32]; expected = mem[i][31:0];
      #1;
      got = {{{{16{{{ext}}}}}, out}};
      if (got !== expected) begin
        if (bad == 0) $display("FIRST %0d %0d %0d %0d", a, b, got, expected);
        bad = bad + 1;
      end
    end
    $display("DONE %0d %0d", i, bad);
    $finish;
  end
endmodule
"""


@dataclass(frozen=True)
class Mismatch:
    """The first operand pair (byte codes, table order) where the simulated circuit differs from the table."""

    a: int
    b: int
    circuit: int  # the simulated product, as the table's int32 value
    table: int


@dataclass(frozen=True)
class Verification:
    """The result of simulating one multiplier's Verilog against its table."""

    name: str
    vectors: int  # operand pairs simulated
    mismatches: int
    first: Mismatch | None
    lut_sha256: str

    @property
    def ok(self) -> bool:
        return self.vectors == N_VECTORS and self.mismatches == 0

    def message(self) -> str:
        if self.ok:
            return f"{self.name}: Verilog == table on all {self.vectors} operand pairs"
        if self.first is None:
            return f"{self.name}: simulated only {self.vectors} of {N_VECTORS} operand pairs"
        f = self.first
        return (
            f"{self.name}: Verilog differs from the table on {self.mismatches} of {self.vectors} operand "
            f"pairs; first at a=0x{f.a:02x}, b=0x{f.b:02x}: circuit {f.circuit}, table {f.table}"
        )

    def to_json(self) -> dict[str, Any]:
        first = None if self.first is None else vars(self.first)
        return {
            "name": self.name,
            "ok": self.ok,
            "vectors": self.vectors,
            "mismatches": self.mismatches,
            "first_mismatch": first,
            "lut_sha256": self.lut_sha256,
        }


def _int32(u: int) -> int:
    return u - (1 << 32) if u >= 1 << 31 else u


def simulate_verilog(m: Multiplier, design: str, vectors: str) -> Verification:
    """Simulate Verilog text `design` (top module `m.name`) on vector text `vectors` with iverilog."""
    require("iverilog")
    require("vvp")
    ext = "out[15]" if m.signed else "1'b0"
    with tempfile.TemporaryDirectory(prefix="dse-iverilog-") as tmp:
        d = Path(tmp)
        (d / "design.v").write_text(design)
        (d / "vectors.hex").write_text(vectors)
        (d / "tb.v").write_text(TESTBENCH.format(n=N_VECTORS, last=N_VECTORS - 1, name=m.name, ext=ext))
        run_tool(["iverilog", "-g2005", "-o", "sim.vvp", "-s", "tb", "tb.v", "design.v"], d)
        out = run_tool(["vvp", "-n", "sim.vvp"], d, timeout=600.0)
    first = None
    vectors_done = mismatches = 0
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["FIRST"] and len(parts) == 5:
            a, b, got, want = (int(x) for x in parts[1:])
            first = Mismatch(a, b, _int32(got), _int32(want))
        elif parts[:1] == ["DONE"] and len(parts) == 3:
            vectors_done, mismatches = int(parts[1]), int(parts[2])
    return Verification(m.name, vectors_done, mismatches, first, m.sha256)


def verify(m: Multiplier) -> Verification:
    """Export `m`'s Verilog and vectors and simulate them (UserError when `m` has no circuit)."""
    design = verilog(m)
    if design is None:
        raise UserError(f"{m.name}: no circuit to verify (closed-form or imported table; no Verilog)")
    return simulate_verilog(m, design, vector_text(m))
