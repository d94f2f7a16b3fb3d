"""`dse prepare`: train, quantize and measure the starting point of every later stage."""

from __future__ import annotations

from pathlib import Path

import click

from dse.cli.options import (
    data_option,
    device_option,
    json_option,
    library_option,
    out_option,
    threads_option,
)


@click.command("prepare")
@click.argument("study", required=False)
@out_option
@data_option
@device_option
@threads_option
@json_option
@library_option
def prepare(
    study: str | None, out: Path | None, data: Path | None, device: str, threads: int | None, as_json: bool
) -> None:
    """Float training (or the study's checkpoint), BatchNorm folding, 8-bit conversion, calibration and
    QAT; then float, quantized and exact-table accuracy on the validation and test splits.

    STUDY is a built-in study (digits, mnist_lenet5, fashion_resnet20, cifar10_resnet20; default digits),
    a study TOML or a run directory (prepared again with its own study.toml). With a checkpoint in the
    study, the float network is the checkpoint (no float training unless [train] epochs is given).
    Stages whose inputs did not change are loaded from the run directory, not recomputed.

    \b
    Examples:
      dse prepare                                   # digits, runs/digits
      dse prepare mnist_lenet5 --data mnist10k.npz --json
      dse prepare fashion_resnet20                  # Debian's dataset-fashion-mnist, minutes on CPU
      dse prepare cifar10_resnet20 --data cifar-10-batches-py --device cuda
    """
    from dse.prepare import prepare as run_prepare
    from dse.util import emit_json, log, set_threads

    set_threads(threads)
    result = run_prepare(study, out=out, data=data, device=device)
    if as_json:
        emit_json(result.to_json())
        return
    log(f"run directory: {result.run_dir}")
    click.echo(
        f"{result.study}: float {result.float_accuracy:.4f}, quantized {result.quant_accuracy:.4f}, "
        f"exact table {result.lut_exact_accuracy:.4f} (validation, {result.splits['val']} images)"
    )
    for layer in result.layers:
        shifted = "  input: shifted zero point (negative inputs)" if layer.shifted else ""
        click.echo(
            f"  {layer.name:<24} {layer.kind:<6} fan-in {layer.fan_in:>6}  MACs {layer.macs:>12,}{shifted}"
        )
    shifted_layers = [layer.name for layer in result.layers if layer.shifted]
    if shifted_layers:
        click.echo(
            f"  {len(shifted_layers)} layer(s) get negative inputs under the unsigned format and run with a "
            f"shifted activation zero point ({', '.join(shifted_layers)}); the hardware must apply it too "
            "(the exported configuration's layers[].quant holds it)"
        )
    click.echo(f"  total MACs per sample: {result.total_macs:,}; {result.seconds['total']:.1f} s")
