"""`dse analyze`: predicted vs measured error per layer × multiplier, and at network level."""

from __future__ import annotations

from pathlib import Path

import click

from dse.cli.options import data_option, device_option, json_option, library_option


@click.command("analyze")
@click.argument("run_dir", type=click.Path(path_type=Path))
@data_option
@device_option
@click.option(
    "--multipliers",
    "patterns",
    multiple=True,
    help="Only these multipliers (names or fnmatch patterns; repeatable). Default: the search space.",
)
@click.option(
    "--predictor",
    type=click.Choice(["sampled", "weight-aware", "p3"]),
    default="sampled",
    show_default=True,
    help="The predictor of the summary field sigma_median_rel_error.",
)
@click.option(
    "--images",
    type=int,
    default=None,
    help="Validation images for the network-level simulations (default: the whole split).",
)
@click.option(
    "--layer-images",
    type=int,
    default=500,
    show_default=True,
    help="Validation images for the layer-level measurement.",
)
@click.option(
    "--toggle-only",
    is_flag=True,
    help="Only the data-dependent energy table (no simulations; needs the run's profiles and front).",
)
@json_option
@library_option
def analyze(
    run_dir: Path,
    data: Path | None,
    device: str,
    patterns: tuple[str, ...],
    predictor: str,
    images: int | None,
    layer_images: int,
    toggle_only: bool,
    as_json: bool,
) -> None:
    """Predicted vs measured error std and mean at every layer's output for every multiplier (measured
    by behavioural simulation of the layer with exact inputs on validation images, disjoint from the
    training images the predictors saw), with P1's closed-form layer distortion (from each multiplier's error
    moments under the layer's operand histograms, no sampling) and its Spearman against the measured one, and,
    for every homogeneous assignment, predicted network
    distortion vs measured accuracy drop and logit distortion (Spearman). After a search, also the
    data-dependent energy of every multiplier the front uses, per layer: the toggle activity of its circuit
    under the layer's profiled operands (weight-stationary: one weight per multiplier, the im2col rows stream
    past) relative to the exact array on the same stream, next to the static gate-count energy_rel.

    \b
    Examples:
      dse analyze runs/digits
      dse analyze runs/mnist_lenet5 --data mnist10k.npz --json
      dse analyze runs/digits --multipliers 'trunc*' --predictor p3
      dse analyze runs/mnist_lenet5 --toggle-only
    """
    from dse.errors.analyze import analyze as run_analyze
    from dse.prepare import load_prepared
    from dse.rundir import RunDir
    from dse.util import UserError, emit_json

    for name, v in (("--images", images), ("--layer-images", layer_images)):
        if v is not None and v <= 0:
            raise UserError(f"{name}: expected a positive number of images, got {v}")
    from dse.report.activity import front_toggle_table, toggle_lines

    if toggle_only:
        table = front_toggle_table(run_dir)
        if as_json:
            emit_json({"toggle_energy": table.to_json()})
        else:
            click.echo("\n".join(toggle_lines(table)))
        return
    prepared = load_prepared(run_dir, data=data, device=device)
    result = run_analyze(
        prepared,
        list(patterns) or None,
        default_predictor=predictor,
        layer_images=layer_images,
        network_images=images,
    )
    toggles = None
    if RunDir(run_dir).summary_json.is_file():  # the front's multipliers: after a search
        toggles = front_toggle_table(run_dir)
        result["toggle_energy"] = toggles.to_json()
    if as_json:
        emit_json(result)
        return

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    click.echo(
        f"{result['study']}: {result['images']['layers']} validation images per layer, "
        f"{result['images']['network']} for the network"
    )
    for layer in result["layers"]:
        click.echo(f"{layer['name']} (fan-in {layer['fan_in']}, output std {layer['output_std']:.4g})")
        click.echo(
            f"  {'multiplier':<20} {'meas σ':>10} {'pred σ':>10} {'meas mean':>10} {'pred mean':>10} "
            f"{'meas dist':>10} {'P1 dist':>10} {'comp dist':>10} {'tuned dist':>10}"
        )
        for e in layer["multipliers"]:
            p = e["predicted"][predictor]
            click.echo(
                f"  {e['multiplier']:<20} {e['measured_sigma']:10.4g} {p['sigma']:10.4g} "
                f"{e['measured_mean']:10.4g} {p['mean']:10.4g} "
                f"{e['measured_distortion']:10.4g} {e['p1_distortion']:10.4g} "
                f"{e.get('measured_distortion_compensated', float('nan')):10.4g} "
                f"{e.get('measured_distortion_weight_tuned', float('nan')):10.4g}"
            )
        click.echo(f"  P1 distortion Spearman: {fmt(layer['p1_distortion_spearman'])}")
    click.echo("network (homogeneous assignments):")
    for n in result["network"]:
        click.echo(
            f"  {n['multiplier']:<20} energy {n['energy_rel']:.3f}  accuracy {n['accuracy']:.4f}  "
            f"logit distortion {n['logit_distortion']:.4f}  predicted {n['predicted_distortion']:.4f}"
        )
    by = ", ".join(f"{k} {fmt(v)}" for k, v in result["sigma_median_rel_error_by_predictor"].items())
    click.echo(f"sigma_median_rel_error ({predictor}): {fmt(result['sigma_median_rel_error'])}  [{by}]")
    click.echo(f"distortion_accuracy_spearman: {fmt(result['distortion_accuracy_spearman'])}")
    click.echo(
        f"p1_distortion_spearman (all layers × multipliers): {fmt(result['p1_distortion_spearman']['overall'])}"
    )
    comp = result.get("compensation")
    if comp:
        ratios = [v for v in comp["distortion_ratio_compensated"].values() if v is not None]
        tuned = [v for v in comp["distortion_ratio_weight_tuned"].values() if v is not None]
        if ratios:
            click.echo(
                f"layer distortion / with bias compensation (median over layers, then multipliers): "
                f"{sorted(ratios)[len(ratios) // 2]:.2f}x; / with weight tuning: {sorted(tuned)[len(tuned) // 2]:.2f}x"
            )
    if toggles is not None:
        click.echo("\n".join(toggle_lines(toggles)))
    click.echo(f"distortion_logit_spearman: {fmt(result['distortion_logit_spearman'])}")
