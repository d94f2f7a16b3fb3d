"""`dse export`: one point of a run as a configuration JSON — a named trial, or the front point with the
lowest energy within an accuracy-loss budget below the quantized accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dse.hwconfig import write_config
from dse.multipliers.library import load_library
from dse.report.config import MultiplierSource, build_config
from dse.report.results import RunResults, read_results
from dse.rundir import RunDir
from dse.search.records import SearchPoint
from dse.util import UserError


def load_library_for(run: RunResults) -> MultiplierSource:
    """The multiplier library the run's names refer to (the user library directory included: the search
    space's `library`, else --library / $DSE_LIBRARY / the default)."""
    return load_library(run.library_dir)


def select_point(
    run: RunResults, trial: int | None = None, max_accuracy_loss: float | None = None
) -> SearchPoint:
    """A named trial, or the lowest-energy front point whose validation accuracy is at most
    `max_accuracy_loss` percentage points below the quantized accuracy."""
    if (trial is None) == (max_accuracy_loss is None):
        raise UserError("export: give exactly one of --trial N or --max-accuracy-loss PP")
    if trial is not None:
        return run.find_trial(trial)
    assert max_accuracy_loss is not None
    if not math.isfinite(max_accuracy_loss) or max_accuracy_loss < 0:
        raise UserError(
            f"--max-accuracy-loss {max_accuracy_loss}: expected a number of percentage points ≥ 0"
        )
    q = run.quant_accuracy
    if q is None:
        raise UserError(
            f"{RunDir(run.run_dir).summary_json}: quant_accuracy: missing, cannot apply an accuracy budget"
        )
    front = [p for p in run.summary.front if p.accuracy is not None]
    if not front:
        raise UserError(
            f"{RunDir(run.run_dir).summary_json}: front: empty (the search has not simulated a point yet)"
        )
    floor = q - max_accuracy_loss / 100.0
    ok = [p for p in front if _accuracy(p) >= floor - 1e-12]
    if not ok:
        best = max(front, key=lambda p: (_accuracy(p), -p.energy_rel))
        acc = _accuracy(best)
        raise UserError(
            f"--max-accuracy-loss {max_accuracy_loss:g}: no front point within {max_accuracy_loss:g} pp of the "
            f"quantized accuracy {100 * q:.2f} %; the best available is trial {best.trial} at "
            f"{100 * acc:.2f} % (loss {100 * (q - acc):.2f} pp, energy saving "
            f"{100 * (1 - best.energy_rel):.1f} %)"
        )
    return min(ok, key=lambda p: (p.energy_rel, -_accuracy(p)))


def _accuracy(p: SearchPoint) -> float:
    """A front point's validation accuracy (the front holds simulated points only)."""
    if p.accuracy is None:
        raise ValueError(f"front point of trial {p.trial} has no accuracy")
    return p.accuracy


def export_config(
    run_dir: Path,
    out: Path | None = None,
    *,
    trial: int | None = None,
    max_accuracy_loss: float | None = None,
    library: MultiplierSource | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the chosen point's configuration (default `RUN_DIR/configs/trial_<N>.json`); return
    (path, configuration)."""
    run = read_results(run_dir)
    point = select_point(run, trial, max_accuracy_loss)
    config = build_config(run, point, library if library is not None else load_library_for(run))
    if out is None:
        tag = point.trial
        out = RunDir(run.run_dir).config_json(tag)
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UserError(f"-o {out}: is a directory; expected a file name such as cfg.json")
    write_config(out, config)
    return out, config


def export_hardware(
    run_dir: Path,
    config_path: Path,
    config: dict[str, Any],
    out: Path,
    library: MultiplierSource | None = None,
) -> list[Any]:
    """The hardware hand-off of an exported configuration (`dse.hardware.handoff.write_handoff`): Verilog or
    C file, test vectors and a manifest per multiplier the configuration uses (names resolved in the
    run's library, as the export does)."""
    from dse.hardware.handoff import write_handoff
    from dse.multipliers.library import default_library_dir

    lib = library if library is not None else load_library_for(read_results(run_dir))
    mults = {str(layer["multiplier"]): lib.get(str(layer["multiplier"])) for layer in config["layers"]}
    return write_handoff(out, config["layers"], mults, config_path, default_library_dir())
