"""Hardware hand-off: Verilog, test vectors, iverilog verification, yosys synthesis, toggle activity."""
