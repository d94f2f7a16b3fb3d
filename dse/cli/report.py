"""`dse report`, `dse export`, `dse evaluate`: the Pareto page, a point's configuration JSON, and its
re-measurement by behavioural simulation. Heavy imports stay inside the functions."""

from __future__ import annotations

from pathlib import Path

import click

from dse.cli.options import data_option, library_option
from dse.util import emit_json, log


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="HTML file (default RUN_DIR/report.html).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
@click.option("--json", "as_json", is_flag=True, help='Print {"path", "points", "front"} as JSON.')
@library_option
def report(run_dir: Path, out: Path | None, open_browser: bool, as_json: bool) -> None:
    """Write the interactive Pareto report of a run: one self-contained HTML file (works offline).

    Energy saving vs accuracy of every simulated candidate, the front, the baselines; click a point for
    its per-layer detail and its configuration JSON. Works while the search is still running.

    \b
    Example:
      dse report runs/digits --open
    """
    from dse.report.html import write_report

    path, stats = write_report(run_dir, out)
    if open_browser:
        import webbrowser

        uri = path.resolve().as_uri()
        if not webbrowser.open(uri):
            log(f"report: no web browser found on this machine; open {uri} in a browser elsewhere")
    if as_json:
        emit_json({"path": str(path), **stats})
    else:
        click.echo(f"{path}  ({stats['points']} points, {stats['front']} on the front)")


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--trial", type=int, default=None, help="Export this trial (number as in the report).")
@click.option(
    "--max-accuracy-loss",
    type=float,
    default=None,
    metavar="PP",
    help="Export the lowest-energy front point at most PP percentage points below the quantized accuracy.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output file (default RUN_DIR/configs/trial_N.json).",
)
@click.option(
    "--hardware",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write DIR: per multiplier used, its Verilog (built-in circuits) or C file (imported C "
    "models), its 65,536 test vectors, and manifest.json tying them to the configuration's LUT sha256.",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"path", "trial", "energy_rel", "accuracy"} as JSON.'
)
@library_option
def export(
    run_dir: Path,
    trial: int | None,
    max_accuracy_loss: float | None,
    out: Path | None,
    hardware: Path | None,
    as_json: bool,
) -> None:
    """Write one point of a run as a per-layer configuration JSON (validated against the shipped schema).

    \b
    Examples:
      dse export runs/digits --max-accuracy-loss 1.0 -o cfg.json
      dse export runs/digits --trial 17 -o trial17.json --hardware hw/
    """
    from dse.report.export import export_config, export_hardware

    path, config = export_config(run_dir, out, trial=trial, max_accuracy_loss=max_accuracy_loss)
    if hardware is not None:
        for e in export_hardware(run_dir, path, config, hardware):
            log(f"{hardware}/{e.name}: {e.note} (layers {', '.join(e.layers)})")
    t = config["totals"]
    info = {
        "path": str(path),
        "trial": config["provenance"]["trial"],
        "energy_rel": t["energy_rel"],
        "accuracy": t["accuracy"],
        "test_accuracy": t["test_accuracy"],
    }
    if as_json:
        emit_json(info)
    else:
        acc = "?" if t["accuracy"] is None else f"{100 * t['accuracy']:.2f} %"
        click.echo(
            f"{path}: trial {info['trial']}, energy saving {100 * t['energy_saving']:.1f} %, accuracy {acc} (validation)"
        )


@click.command("evaluate")
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory to rebuild the model from (default: the one the configuration names).",
)
@data_option
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | auto")
@click.option(
    "--split",
    type=click.Choice(["val", "test"]),
    default="val",
    show_default=True,
    help="Split to measure (the recorded accuracy is on val).",
)
@click.option(
    "--rest",
    type=click.Choice(["exact"]),
    default=None,
    help="A plain {layer: multiplier} file that names only some layers: run the others exact.",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"accuracy", "energy_rel", "matches_recorded", …}.'
)
@library_option
def evaluate(
    config_file: Path,
    run_dir: Path | None,
    data: Path | None,
    device: str,
    split: str,
    rest: str | None,
    as_json: bool,
) -> None:
    """Re-measure a configuration by behavioural simulation (every product through its multiplier's table).

    Verifies each layer's LUT sha256 against the library and the layers against the model; on the same
    machine the accuracy equals the recorded one exactly.

    \b
    Example:
      dse evaluate cfg.json --json
      dse evaluate assignment.json --run runs/digits
      dse evaluate first_layers.json --run runs/digits --rest exact
    """
    from dse.report.evaluate import evaluate_config

    result = evaluate_config(config_file, run_dir=run_dir, data=data, device=device, split=split, rest=rest)
    if as_json:
        emit_json(result)
        return
    rec = result["recorded_accuracy"]
    match = {
        True: "matches the recorded accuracy",
        False: f"differs from the recorded {_pct(rec)}",
        None: "nothing recorded to compare",
    }
    log(f"run {result['run_dir']}")
    if result["exact_rest"]:
        log(f"exact (--rest exact): {', '.join(result['exact_rest'])}")
    click.echo(
        f"accuracy {_pct(result['accuracy'])} ({split}), energy saving {100 * (1 - result['energy_rel']):.1f} % "
        f"(energy_rel {result['energy_rel']:.4f}): {match[result['matches_recorded']]}"
    )


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.2f} %"
