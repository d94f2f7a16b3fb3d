"""`dse search` and `dse worker`: thin wrappers around dse.search.run; `dse search` then writes the
report (dse.report), which sits above the search."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dse.cli.options import (
    data_option,
    device_option,
    json_option,
    library_option,
    out_option,
    threads_option,
)

if TYPE_CHECKING:
    from dse.search.records import Summary


@click.command("search")
@click.argument("study", required=False)
@out_option
@click.option(
    "--storage", default=None, help="Optuna storage URL (default: SQLite in <run>/search/optuna.db)."
)
@click.option(
    "--budget", type=int, default=None, help="Behavioural simulations of the search (default: the study's)."
)
@click.option(
    "--study-name", default=None, help="Optuna study name in the storage (default: the study's name)."
)
@click.option("--seed", type=int, default=None, help="Search seed (default: the study's search.seed).")
@click.option("--no-report", is_flag=True, help="Do not write report.html at the end.")
@threads_option
@data_option
@device_option
@json_option
@library_option
def search(study, out, storage, budget, study_name, seed, no_report, threads, data, device, as_json):
    """Run the study end to end: prepare, error models, AGN, the Pareto search, baselines, summary, report.

    \b
    Examples:
      dse search                                  # the default study (digits), CPU, a few minutes
      dse search mnist_lenet5 --data ~/data/mnist10k.npz   # x [N,28,28] uint8, y
      dse search digits --storage postgresql://user:pw@host/db   # then: dse worker digits --storage … --study digits
    """
    from dse.search.run import run_search
    from dse.util import emit_json, log

    result = run_search(
        study,
        out=out,
        storage=storage,
        budget=budget,
        device=device,
        data=data,
        study_name=study_name,
        seed=seed,
        threads=threads,
    )
    report_error = None if no_report else _write_report(result.run_dir)
    summary = result.summary
    if as_json:
        doc = summary.to_json()
        if report_error is not None:  # the command's JSON says the report is missing, and why
            doc["fallbacks"] = [
                *doc["fallbacks"],
                {"stage": "report", "error": report_error, "effect": "no report.html"},
            ]
        emit_json(doc)
        return
    log(
        f"search {summary.study}: {summary.evaluations} simulations in {summary.seconds:.1f} s, "
        f"front {len(summary.front)} points, hypervolume {summary.hypervolume:.4f} "
        f"(homogeneous {summary.baselines['homogeneous'].hypervolume:.4f})"
    )
    for line in end_of_run_lines(summary, result.run_dir, report=not no_report):
        click.echo(line)


def end_of_run_lines(summary: Summary, run_dir: Path, *, report: bool = True) -> list[str]:
    """What the user got (the headline saving in percent, judged on test when the summary has the
    test-judged figure), where it is, and the next commands."""
    import shlex

    t = summary.targets
    best = getattr(t, "best_saving_within_1pp_test", None)
    homo = getattr(t, "best_homogeneous_saving_within_1pp_test", None)
    judged = "test split"
    if best is None:
        best, homo, judged = (
            getattr(t, "best_saving_within_1pp", None),
            getattr(t, "best_homogeneous_saving_within_1pp", None),
            "validation split",
        )
    run = shlex.quote(str(run_dir))
    lines = []
    if best is None:
        lines.append("no point within 1 pp of the quantized accuracy")
    else:
        vs = f" (best homogeneous {100 * homo:.1f} %)" if homo is not None else ""
        lines.append(f"best energy saving within 1 pp: {100 * best:.1f} %{vs}, judged on the {judged}")
    lines.append(f"run directory: {run_dir}  (summary.json{', report.html' if report else ''})")
    lines.append("next:")
    lines.append(f"  dse report {run} --open")
    lines.append(f"  dse export {run} --max-accuracy-loss 1.0 -o cfg.json")
    return lines


def _write_report(run_dir: Path) -> str | None:
    """The report after the search; a failing report never fails the search (logged, and returned as
    "Type: message" for the command's JSON; None when it was written)."""
    from dse.report.html import write_report
    from dse.util import UserError, log

    try:
        write_report(run_dir)
    except (UserError, OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        # the report reads everything the search wrote; hours of search are kept in summary.json
        error = f"{type(e).__name__}: {' '.join(str(e).split())}"
        log(f"search: the report failed ({error}); summary.json is written, retry with dse report {run_dir}")
        return error
    return None


@click.command("worker")
@click.argument("study", required=False)
@click.option("--storage", required=True, help="Optuna storage URL of the running study.")
@click.option("--study", "study_name", required=True, help="Name of the study in the storage.")
@threads_option
@out_option
@data_option
@device_option
@json_option
@library_option
def worker(study, storage, study_name, threads, out, data, device, as_json):
    """Join a running search from another process or machine.

    STUDY (a study file, built-in study name or run directory) and/or --out RUN_DIR say what the worker
    runs; it takes no study, code or paths from the storage, and joins only a study whose identity hash in
    the storage equals that of its own study, data and QAT checkpoint.

    \b
    Example:
      dse worker runs/digits --storage postgresql://user:pw@host/db --study digits
    """
    from dse.search.run import run_worker
    from dse.util import emit_json

    result = run_worker(storage, study_name, study, out=out, data=data, device=device, threads=threads)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(
            f"worker {study_name}: {result.simulated} simulated, {result.cached} from cache, "
            f"{result.failed} failed, {result.seconds:.1f} s"
        )
