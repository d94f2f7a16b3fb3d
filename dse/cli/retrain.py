"""`dse retrain`: recover accuracy lost to an assignment by a short retraining (`dse.retrain`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dse.cli.options import data_option, json_option, library_option
from dse.util import UserError

if TYPE_CHECKING:
    from dse.retrain.compare import CrossEvaluation, MethodComparison

# the CLI starts without torch: `dse.retrain.surrogates.METHODS`, repeated (a test checks they agree)
METHOD_NAMES = ("behavioral", "errmodel", "multiplicative", "awgn", "agn")


@click.command("retrain")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help='Configuration JSON (`dse export`) or a plain {"layer": "multiplier"} object.',
)
@click.option(
    "--method",
    default="errmodel",
    show_default=True,
    help="behavioral | errmodel | multiplicative | awgn | agn: what the network trains through; "
    "a comma list or `all` compares them side by side in one run.",
)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate (cosine decay).")
@click.option("--batch-size", type=int, default=None, help="Default: the study's train.batch_size.")
@click.option(
    "--calibration-samples",
    type=int,
    default=512,
    show_default=True,
    help="Training images simulated through the tables for the error statistics.",
)
@click.option(
    "--refresh-stats/--no-refresh-stats",
    default=True,
    show_default=True,
    help="Re-measure the error statistics on the current weights before every epoch after the first "
    "(--no-refresh-stats: once, as published).",
)
@click.option(
    "--cross",
    is_flag=True,
    help="Cross-evaluation matrix: retrain with each multiplier's model "
    "(homogeneous), evaluate with every multiplier.",
)
@click.option(
    "--multipliers",
    "multiplier_list",
    default=None,
    help="Comma-separated multipliers for --cross (default: those the config names).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--rest",
    type=click.Choice(["exact"]),
    default=None,
    help="A configuration that names only some layers: run the others exact (else an error).",
)
@data_option
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | auto")
@json_option
@library_option
def retrain(
    run_dir,
    config_path,
    method,
    epochs,
    lr,
    batch_size,
    calibration_samples,
    refresh_stats,
    cross,
    multiplier_list,
    seed,
    rest,
    data,
    device,
    as_json,
):
    """Retrain a prepared network for a multiplier assignment and report the validation accuracy
    before and after, both measured by behavioural simulation (the tables), whatever METHOD trained with.
    The retrained checkpoint goes to RUN_DIR/retrain/<config-hash>/<method>.pt.

    \b
    Example:
      dse retrain runs/digits --config cfg.json --method errmodel --epochs 3
      dse retrain runs/digits --config cfg.json --method behavioral --json
      dse retrain runs/digits --config cfg.json --method all     # the methods side by side
      dse retrain runs/digits --cross --multipliers bam_h2_v6_u8,bam_h4_v8_u8
    """
    from dse.hwconfig import read_assignment_file
    from dse.retrain.compare import compare_methods, cross_evaluate
    from dse.retrain.loop import retrain as run_retrain
    from dse.util import emit_json, resolve_device

    dev = str(resolve_device(device))
    methods = list(METHOD_NAMES) if method == "all" else [m.strip() for m in method.split(",") if m.strip()]
    for m in methods or [method]:
        if m not in METHOD_NAMES:
            raise UserError(f"--method {m}: expected one of {', '.join(METHOD_NAMES)}, a comma list or all")
    if epochs <= 0:
        raise UserError(f"--epochs {epochs}: expected a positive number of epochs")
    if calibration_samples < 2:
        raise UserError(f"--calibration-samples {calibration_samples}: expected at least 2")
    assignment, raw = ({}, {})
    if config_path is not None:
        assignment, raw = read_assignment_file(config_path)
    elif not (cross and multiplier_list):
        raise UserError('--config: required (a configuration JSON or {"layer": "multiplier"} object)')
    common = dict(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        calibration_samples=calibration_samples,
        refresh_stats=refresh_stats,
        seed=seed,
        data=data,
        device=dev,
    )
    if cross:
        if len(methods) != 1:
            raise UserError("--cross: give one --method")
        method = methods[0]
        names = (
            [s.strip() for s in multiplier_list.split(",") if s.strip()]
            if multiplier_list
            else list(dict.fromkeys(assignment.values()))
        )
        matrix = cross_evaluate(run_dir, names, method=method, **common)
        if as_json:
            emit_json(matrix.to_json())
        else:
            click.echo(format_matrix(matrix))
        return
    if len(methods) > 1:
        comparison = compare_methods(
            run_dir, assignment, methods, where=str(config_path), raw_config=raw, rest=rest, **common
        )
        if as_json:
            emit_json(comparison.to_json())
        else:
            click.echo(format_comparison(comparison))
        return
    result = run_retrain(
        run_dir, assignment, methods[0], where=str(config_path), raw_config=raw, rest=rest, **common
    )
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"method            {result.method} ({result.epochs} epochs, lr {result.lr:g})")
    click.echo(f"quant_accuracy    {result.quant_accuracy:.4f}")
    click.echo(f"accuracy_before   {result.accuracy_before:.4f}")
    click.echo(f"accuracy_after    {result.accuracy_after:.4f}   (behavioural simulation, validation)")
    click.echo(f"seconds_per_epoch {result.seconds_per_epoch:.3f}   (CPU {result.cpu_seconds_per_epoch:.3f})")
    click.echo(f"checkpoint        {result.checkpoint}")


def format_matrix(out: CrossEvaluation) -> str:
    cols = out.columns
    width = max(12, *(len(c) for c in cols)) + 2
    head = "retrained \\ evaluated".ljust(24) + "".join(c.rjust(width) for c in cols)
    lines = [
        f"cross-evaluation ({out.method}, {out.epochs} epochs; validation accuracy by simulation)",
        head,
    ]
    for row, accs in zip(out.rows, out.accuracy):
        lines.append(row.ljust(24) + "".join(f"{a:.4f}".rjust(width) for a in accs))
    return "\n".join(lines)


def format_comparison(out: MethodComparison) -> str:
    head = f"{'method':16}{'before':>9}{'after':>9}{'s/epoch':>10}{'CPU s/epoch':>13}"
    lines = [head + "   (validation accuracy by simulation)"]
    for r in out.results:
        lines.append(
            f"{r.method:16}{r.accuracy_before:9.4f}{r.accuracy_after:9.4f}"
            f"{r.seconds_per_epoch:10.3f}{r.cpu_seconds_per_epoch:13.3f}"
        )
    if out.errmodel_speedup_vs_behavioral:
        lines.append(
            f"errmodel epochs {out.errmodel_speedup_vs_behavioral:.2f}x faster than behavioral "
            f"(CPU time {out.errmodel_cpu_speedup_vs_behavioral:.2f}x)"
        )
    return "\n".join(lines)
