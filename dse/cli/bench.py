"""`dse bench kernels`: kernel throughput next to float32 GEMM/conv of the same shapes (prints, never asserts)."""

from __future__ import annotations

import os

import click

from dse.cli.options import library_option


@click.group("bench", context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmarks. They print measurements side by side in one run and state the hardware.

    \b
    Examples:
      dse bench kernels --quick
      dse bench model --model resnet20
    """


@bench.command("kernels")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | auto")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--quick",
    is_flag=True,
    help="Smaller shapes (seconds, not minutes; one torch thread on <= 2 cores unless --threads).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch CPU threads (default: torch's choice). --threads 1 gives per-core numbers on a busy machine.",
)
def kernels(device: str, as_json: bool, quick: bool, threads: int | None) -> None:
    """Throughput of every approximate-GEMM backend in G LUT-MAC/s for ResNet-like GEMM and conv shapes
    (incl. M=8192 K=576 N=64 and a depthwise conv), a full-rank and a rank<=8 table, each next to a
    float32 matmul/conv of the same shape measured alternately in the same run.

    \b
    Examples:
      dse bench kernels --quick
      dse bench kernels --threads 1      # per-core numbers, robust on a shared machine
      dse bench kernels --device cuda --json > bench.json
    """
    from dse.kernels.bench import bench_kernels, format_table
    from dse.util import emit_json, log, resolve_device, set_threads

    dev = resolve_device(device)
    if threads is None and quick and (os.cpu_count() or 1) <= 2:
        threads = 1  # --quick on <= 2 cores: one thread (two on a busy 2-core machine took 96 s, not 17 s)
    set_threads(threads)
    if not as_json:
        log("benchmarking (timings on a shared or busy machine are noisy; ratios are measured side by side)")
    result = bench_kernels(dev, quick=quick)
    if as_json:
        emit_json(result)
    else:
        click.echo(format_table(result))


@bench.command("model")
@click.option("--model", "model_name", default="resnet20", show_default=True, help="A built-in model name.")
@click.option(
    "--multiplier",
    "multipliers",
    multiple=True,
    help="Multiplier for every layer (repeatable; default: exact, bam_h3_v9, trunc8, drum4, mitchell).",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=256, show_default=True, help="Inputs per forward."
)
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | auto")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@library_option
def model(
    model_name: str, multipliers: tuple[str, ...], batch: int, device: str, as_json: bool, threads: int | None
) -> None:
    """A whole network's forward with every layer on an approximate multiplier (behavioural simulation,
    table mode) next to the same forward in exactly-quantized mode, measured alternately in one run: the
    "approximate forward <= 3x quantized" figure. Random weights; BatchNorm folded.

    \b
    Examples:
      dse bench model                                  # ResNet-20, batch 256, CPU
      dse bench model --device cuda --batch 1024 --json
      dse bench model --model lenet5 --multiplier bam_h3_v9_u8
    """
    from dse.benchmark import DEFAULT_MULTIPLIERS, bench_model, format_model_table
    from dse.models import BUILTIN_MODELS
    from dse.util import UserError, emit_json, log, resolve_device, set_threads

    if model_name not in BUILTIN_MODELS:
        raise UserError(f"--model: expected one of {', '.join(BUILTIN_MODELS)}, got {model_name!r}")
    dev = resolve_device(device)
    set_threads(threads)
    if not as_json:
        log(f"benchmarking {model_name} (first forwards prepare tables and race kernel backends)")
    result = bench_model(model_name, multipliers or DEFAULT_MULTIPLIERS, batch, dev)
    if as_json:
        emit_json(result)
    else:
        click.echo(format_model_table(result))
