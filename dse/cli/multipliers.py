"""`dse multipliers list | show | import | export`: the multiplier library (built-ins + the user library)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from dse.util import UserError

if TYPE_CHECKING:
    from dse.multipliers.core import Multiplier

F = TypeVar("F", bound=Callable[..., object])

LIBRARY_HELP = "User library directory (imported multipliers). Default: $DSE_LIBRARY, else ~/.local/share/dse/multipliers."


def _library_option(f: F) -> F:
    return click.option(
        "--library", "library", type=click.Path(file_okay=False, path_type=Path), help=LIBRARY_HELP
    )(f)


def _library_dir(ctx: click.Context, library: Path | None) -> Path:
    from dse.multipliers.library import default_library_dir

    if library is not None:
        return library
    parent = (ctx.obj or {}).get("library")
    return parent if parent is not None else default_library_dir()


@click.group("multipliers", context_settings={"help_option_names": ["-h", "--help"]})
@_library_option
@click.pass_context
def multipliers(ctx: click.Context, library: Path | None) -> None:
    """The library of 8-bit multipliers: the built-ins (exact, broken-array, truncated, recursive 2x2,
    perforated, DRUM, Mitchell, RoBA, ETM; unsigned `*_u8` and signed `*_s8`) plus your imported ones.

    Every table is lut[activation_byte, weight_byte] (int32 [256, 256]); energy_rel is relative to the exact
    multiplier of the same format.

    \b
    Examples:
      dse multipliers list
      dse multipliers list --signed --json
      dse multipliers show drum4_u8
      dse multipliers import mul8u_1AGV.c --library ./mylib
      dse multipliers export bam_h2_v6_u8 -o bam.npy
    """
    ctx.ensure_object(dict)
    ctx.obj["library"] = library


_COLUMNS = (
    ("name", "{:<22}"),
    ("format", "{:<8}"),
    ("MAE%", "{:>8.4f}"),
    ("WCE%", "{:>8.3f}"),
    ("MRE%", "{:>8.3f}"),
    ("EP%", "{:>7.2f}"),
    ("energy", "{:>7.3f}"),
    ("synth", "{:>7}"),
    ("cells", "{:>7}"),
    ("source", "{}"),
)


def _table_rows(mults: Sequence[Multiplier]) -> list[str]:
    head = "  ".join(
        f"{name:<22}"
        if i == 0
        else f"{name:<8}"
        if i == 1
        else f"{name:>8}"
        if i < 5
        else f"{name:>7}"
        if i < 9
        else name
        for i, (name, _) in enumerate(_COLUMNS)
    )
    lines = [head]
    for m in mults:
        x = m.metrics
        vals = (
            m.name,
            m.format,
            x["mae_percent"],
            x["wce_percent"],
            x["mre_percent"],
            x["ep_percent"],
            m.energy_rel,
            "-" if m.synth_area_rel is None else f"{m.synth_area_rel:.3f}",
            "-" if m.synth_cells is None else str(m.synth_cells),
        )
        cells = [fmt.format(v) for (_, fmt), v in zip(_COLUMNS, vals)]
        src = m.params.get("family", "") if m.source == "builtin" else m.params.get("file", "")
        cells.append(f"{m.source}:{src}" if src else m.source)
        lines.append("  ".join(cells))
    return lines


@multipliers.command("list")
@click.option(
    "--signed/--unsigned", "signed", default=None, help="Only signed (*_s8) or unsigned (*_u8) ones."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (name, signed, metrics, energy…).")
@_library_option
@click.pass_context
def list_cmd(ctx: click.Context, signed: bool | None, as_json: bool, library: Path | None) -> None:
    """List the multipliers with their metrics (MAE%, WCE%, MRE%, EP% over all 65,536 operand pairs) and
    energy_rel (relative to the exact multiplier of the same format).

    `energy` is the gate-model energy_rel; `synth` / `cells` the yosys synthesis of the circuit
    (synth_area_rel: generic-cell area relative to the exact multiplier of the same format; synth_cells:
    cell count), `-` for designs without a circuit (closed-form families, imported tables).

    \b
    Examples:
      dse multipliers list
      dse multipliers list --unsigned --json | jq '.[] | [.name, .mae_percent, .energy_rel]'
      DSE_LIBRARY=./mylib dse multipliers list
    """
    from dse.multipliers.library import load_library
    from dse.util import emit_json

    lib = load_library(_library_dir(ctx, library))
    mults = lib.multipliers(signed)
    if as_json:
        emit_json([m.to_json() for m in mults])
        return
    click.echo("\n".join(_table_rows(mults)))
    click.echo(f"{len(mults)} multipliers (user library: {lib.library_dir})")


@multipliers.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the multiplier as one JSON object.")
@_library_option
@click.pass_context
def show_cmd(ctx: click.Context, name: str, as_json: bool, library: Path | None) -> None:
    """Show one multiplier: format, energy and how it was obtained, provenance, metrics, table sha256.

    \b
    Examples:
      dse multipliers show mitchell_u8
      dse multipliers show drum4_s8 --json
    """
    from dse.multipliers.library import load_library
    from dse.util import emit_json

    m = load_library(_library_dir(ctx, library)).get(name)
    if as_json:
        emit_json(m.to_json())
        return
    click.echo(_describe(m))


def _describe(m: Multiplier) -> str:
    lines = [
        f"{m.name}  ({m.format}, {m.source})",
        f"  energy_rel     {m.energy_rel:.4f}   ({m.energy_method})",
        f"  lut_sha256     {m.sha256}",
    ]
    if m.synth_area_rel is not None:
        lines.insert(
            2, f"  synth_area_rel {m.synth_area_rel:.4f}   (yosys generic cells: {m.synth_cells} cells)"
        )
    for k, v in m.params.items():
        lines.append(f"  {k:<14} {v}")
    for k, v in m.metrics.items():
        lines.append(f"  {k:<14} {v:.6g}")
    return "\n".join(lines)


@multipliers.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--signed/--unsigned", "signed", default=None, help="Operand format (default: inferred; see above)."
)
@click.option("--name", help="Library name (one FILE only). Default: the C function / file name, lowercased.")
@click.option("--energy-rel", type=float, help="Energy relative to the exact multiplier of the same format.")
@click.option(
    "--power-mw", type=float, help="Power in mW (45 nm); divided by 0.391 (unsigned) / 0.425 (signed)."
)
@click.option("--function", help="C models: the function to use (default: the only suitable one).")
@click.option(
    "--swap-operands",
    is_flag=True,
    help="Transpose: the first C argument / table index becomes the weight (second) operand.",
)
@click.option("--replace", is_flag=True, help="Overwrite an imported multiplier of the same name.")
@click.option(
    "--timeout", "timeout_s", type=float, default=10.0, show_default=True, help="C model time limit, s."
)
@click.option("--json", "as_json", is_flag=True, help="Print the imported multipliers as one JSON list.")
@_library_option
@click.pass_context
def import_cmd(
    ctx: click.Context,
    files: tuple[Path, ...],
    signed: bool | None,
    name: str | None,
    energy_rel: float | None,
    power_mw: float | None,
    function: str | None,
    swap_operands: bool,
    replace: bool,
    timeout_s: float,
    as_json: bool,
    library: Path | None,
) -> None:
    """Import multipliers into the user library: EvoApprox-style C models (compiled with the system `cc`,
    run under a time limit; `// KEY = value` header lines kept as published metadata), TFApprox `.bin`
    tables (256x256 uint16 little endian, row = first operand; int16 with --signed), `.npy` / `.npz`
    tables (int, [256, 256]; a `.npz` holds `lut`, optionally `energy_rel`).

    Orientation: the first C argument (first table index) is the activation operand. EvoApprox's evolved
    unsigned models are declared f(B, A): add --swap-operands to use their A as the activation.
    Format: --signed/--unsigned, else inferred (C: mul8s_/mul8u_ name, then argument types; tables: any
    negative entry means signed). A signed C model with an unsigned result type is read as int16.
    Energy: --energy-rel, else --power-mw, else the file's PDK45_PWR, relative to 0.391 mW (unsigned) or
    0.425 mW (signed), the published exact 8-bit multipliers in that 45 nm technology.

    \b
    Examples:
      dse multipliers import mul8u_1AGV.c mul8u_2P7.c
      dse multipliers import mul8s_1KV6.c --library ./mylib --json
      dse multipliers import my_table.npy --unsigned --name my_mul_u8 --energy-rel 0.42
      dse multipliers import axm.bin --power-mw 0.21 --replace
    """
    from dse.multipliers.importers import import_into_library
    from dse.multipliers.library import default_library_dir
    from dse.util import emit_json

    if not 0 < timeout_s < float("inf"):  # nan compares false to everything
        raise UserError(f"--timeout {timeout_s}: expected a positive, finite number of seconds")
    library_dir = _library_dir(ctx, library)
    imported = import_into_library(
        list(files),
        library_dir,
        name=name,
        replace=replace,
        signed=signed,
        energy_rel=energy_rel,
        power_mw=power_mw,
        function=function,
        swap_operands=swap_operands,
        timeout_s=timeout_s,
    )
    where = library_dir.resolve()
    use = "" if where == default_library_dir().resolve() else f"; use them with --library {library_dir}"
    click.echo(f"wrote {len(imported)} multiplier(s) into the library {where}{use}", err=True)
    if as_json:
        emit_json([m.to_json() for m in imported])
        return
    for m in imported:
        click.echo(_describe(m))


@multipliers.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="FILE.npy: the table.")
@click.option(
    "--verilog",
    type=click.Path(dir_okay=False, path_type=Path),
    help="FILE.v: the circuit's Verilog (built-in circuit families only).",
)
@click.option(
    "--vectors",
    type=click.Path(dir_okay=False, path_type=Path),
    help="FILE.hex: all 65,536 operand pairs and products ($readmemh; a, b, int32 product per line).",
)
@_library_option
@click.pass_context
def export_cmd(
    ctx: click.Context,
    name: str,
    output: Path | None,
    verilog: Path | None,
    vectors: Path | None,
    library: Path | None,
) -> None:
    """Write a multiplier's table as .npy: int32 [256, 256], lut[activation_byte, weight_byte]
    (signed operands indexed by their two's-complement byte); with --verilog its gate-level Verilog (top
    module NAME, ports a = activation, b = weight, NAME_out = 16-bit product; from ariths-gen, signed
    designs as a sign-magnitude wrapper around the core), with --vectors its test vectors.

    \b
    Examples:
      dse multipliers export drum4_u8 -o drum4.npy
      dse multipliers export bam_h2_v6_u8 --verilog bam.v --vectors bam.hex
      python -c "import numpy; print(numpy.load('drum4.npy')[3, 5])"
    """
    from dse.multipliers.importers import table_to_npy_bytes
    from dse.multipliers.library import load_library
    from dse.util import atomic_write_bytes, atomic_write_text

    if output is None and verilog is None and vectors is None:
        raise UserError("export: give -o FILE.npy, --verilog FILE.v and/or --vectors FILE.hex")
    m = load_library(_library_dir(ctx, library)).get(name)
    if output is not None and output.suffix.lower() != ".npy":
        raise UserError(f"-o {output}: expected a file name ending in .npy")
    design = None
    if verilog is not None:
        from dse.hardware.verilog import verilog as verilog_of

        design = verilog_of(m)
        if design is None:
            raise UserError(
                f"--verilog: {m.name} has no circuit (closed-form family or imported table); "
                "use -o for its table"
            )
    if output is not None:
        atomic_write_bytes(output, table_to_npy_bytes(m.lut))
        click.echo(
            f"wrote {output} ({m.name}, {m.format}, int32 [256, 256], sha256 {m.sha256[:16]}…)", err=True
        )
    if verilog is not None and design is not None:
        atomic_write_text(verilog, design)
        click.echo(f"wrote {verilog} (module {m.name})", err=True)
    if vectors is not None:
        from dse.hardware.vectors import vector_text

        atomic_write_text(vectors, vector_text(m))
        click.echo(f"wrote {vectors} (65,536 operand pairs of {m.name})", err=True)


@multipliers.command("verify")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every multiplier of the library that has a circuit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list of the results.")
@_library_option
@click.pass_context
def verify_cmd(
    ctx: click.Context, names: tuple[str, ...], all_: bool, as_json: bool, library: Path | None
) -> None:
    """Simulate each multiplier's exported Verilog with Icarus Verilog (Debian `iverilog`) over all 65,536
    operand pairs and check that it reproduces the table bit for bit. Exit 1 when a design differs (the
    first differing operand pair is named); designs without a circuit are errors when named, skipped
    with --all.

    \b
    Examples:
      dse multipliers verify bam_h2_v6_u8 bam_h2_v6_s8
      dse multipliers verify --all --json
    """
    from dse.hardware.simulate import verify
    from dse.hardware.verilog import has_circuit
    from dse.multipliers.library import load_library
    from dse.util import emit_json, progress

    if bool(names) == all_:
        raise UserError("verify: give multiplier NAMES or --all (not both)")
    lib = load_library(_library_dir(ctx, library))
    mults = [m for m in lib.multipliers() if has_circuit(m)] if all_ else [lib.get(n) for n in names]
    for m in mults:
        if not has_circuit(m):
            raise UserError(f"{m.name}: no circuit to verify (closed-form family or imported table)")
    results = [verify(m) for m in progress(mults, desc="iverilog", unit="design")]
    if as_json:
        emit_json([r.to_json() for r in results])
    else:
        for r in results:
            click.echo(("ok    " if r.ok else "FAIL  ") + r.message())
        bad = sum(not r.ok for r in results)
        click.echo(f"{len(results) - bad} of {len(results)} designs reproduce their table", err=True)
    if any(not r.ok for r in results):
        ctx.exit(1)
