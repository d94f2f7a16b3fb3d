"""`dse agn`: learned per-layer noise tolerances (AGN), mapped to multipliers, measured by simulation."""

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


@click.command("agn")
@click.argument("study", required=False)
@out_option
@data_option
@device_option
@click.option(
    "--lambda",
    "lambdas",
    type=float,
    multiple=True,
    help="Regulariser weight λ ≥ 0 (repeat for several points; default: the study's [agn] lambdas).",
)
@click.option(
    "--sigma-max", type=float, default=None, help="Cap σ_max > 0 of the noise reward (default: the study's)."
)
@click.option("--epochs", type=int, default=None, help="AGN training epochs (default: the study's).")
@click.option(
    "--rule",
    type=click.Choice(["sigma", "bias-aware"]),
    default="bias-aware",
    show_default=True,
    help="Mapping rule: predicted σ ≤ tolerance, or √(σ² + mean²) ≤ tolerance.",
)
@click.option(
    "--predictor",
    type=click.Choice(["sampled", "weight-aware", "p3"]),
    default="sampled",
    show_default=True,
    help="σ predictor used by the mapping.",
)
@threads_option
@json_option
@library_option
def agn(
    study: str | None,
    out: Path | None,
    data: Path | None,
    device: str,
    lambdas: tuple[float, ...],
    sigma_max: float | None,
    epochs: int | None,
    rule: str,
    predictor: str,
    threads: int | None,
    as_json: bool,
) -> None:
    """Train the quantized network with learned Gaussian noise at every layer's output (one σ per layer,
    loss = CE − λ·Σ MAC share·min(|σ|, σ_max)), map each layer's tolerance |σ|·std(output) to the cheapest
    multiplier whose predicted error fits, and measure that assignment by behavioural simulation.

    STUDY is a built-in study, a study TOML or a run directory (default: digits); `dse prepare` runs
    first when the run directory lacks it. Results are cached in <run>/agn/.

    \b
    Examples:
      dse agn                                       # digits, the study's λ list
      dse agn mnist_lenet5 --data mnist10k.npz --lambda 0.5 --lambda 0.05 --json
      dse agn runs/digits --rule sigma
    """
    from dse.agn import check_agn_settings, get_agn_results
    from dse.prepare import open_run
    from dse.util import emit_json, set_threads

    set_threads(threads)
    if lambdas or sigma_max is not None:  # bad values fail before any training
        check_agn_settings(list(lambdas) or [0.0], sigma_max if sigma_max is not None else 1.0)
    if epochs is not None and epochs < 0:
        from dse.util import UserError

        raise UserError(f"--epochs: expected a value ≥ 0, got {epochs}")
    prepared = open_run(study, out=out, data=data, device=device)
    results = get_agn_results(
        prepared, list(lambdas) or None, sigma_max=sigma_max, epochs=epochs, rule=rule, predictor=predictor
    )
    if as_json:
        emit_json(
            {
                "study": prepared.study.name,
                "run_dir": str(prepared.run_dir.path),
                "quant_accuracy": prepared.quant_accuracy,
                "results": [r.to_json() for r in results],
            }
        )
        return
    click.echo(f"{prepared.study.name}: quantized accuracy {prepared.quant_accuracy:.4f} (validation)")
    for r in results:
        click.echo(
            f"λ = {r.lam:g}: energy_rel {r.energy_rel:.3f} (saving {1 - r.energy_rel:.1%}), "
            f"accuracy {r.accuracy:.4f} ({rule} rule, {predictor} predictor)"
        )
        for name, sig in r.sigma_rel.items():
            click.echo(
                f"  {name:<24} σ {sig:6.3f}  tolerance {r.tolerance[name]:9.4g}  -> {r.assignment[name]}"
            )
        for other, alt in (r.alternatives or {}).items():
            click.echo(
                f"  ({other} rule: energy_rel {alt['energy_rel']:.3f}, accuracy {alt['accuracy']:.4f})"
            )
