"""`dse bench kernels`: kernel throughput next to float32 GEMM/conv of the same shapes (prints, never asserts)."""

from __future__ import annotations

import click


@click.group("bench", context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmarks. They print measurements side by side in one run and state the hardware.

    \b
    Example:
      dse bench kernels --quick
    """


@bench.command("kernels")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | auto")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--quick", is_flag=True, help="Smaller shapes and fewer repetitions (seconds, not minutes).")
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
    import torch

    from dse.kernels.bench import bench_kernels, format_table
    from dse.util import emit_json, log, resolve_device

    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    if not as_json:
        log("benchmarking (timings on a shared or busy machine are noisy; ratios are measured side by side)")
    result = bench_kernels(dev, quick=quick)
    if as_json:
        emit_json(result)
    else:
        click.echo(format_table(result))
