"""`dse export`: one point of a run as a configuration JSON — a named trial, or the front point with the
lowest energy within an accuracy-loss budget below the quantized accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dse.report.config import build_config, write_config
from dse.report.run import RunData, load_run
from dse.util import UserError


def load_library_for(run: RunData):
    """The multiplier library the run's names refer to (the user library directory included)."""
    from dse.multipliers.library import load_library

    return load_library()


def select_point(
    run: RunData, trial: int | None = None, max_accuracy_loss: float | None = None
) -> dict[str, Any]:
    """A named trial, or the lowest-energy front point whose validation accuracy is at most
    `max_accuracy_loss` percentage points below the quantized accuracy."""
    if (trial is None) == (max_accuracy_loss is None):
        raise UserError("export: give exactly one of --trial N or --max-accuracy-loss PP")
    if trial is not None:
        return run.find_trial(trial)
    if not math.isfinite(max_accuracy_loss) or max_accuracy_loss < 0:
        raise UserError(
            f"--max-accuracy-loss {max_accuracy_loss}: expected a number of percentage points ≥ 0"
        )
    q = run.quant_accuracy
    if q is None:
        raise UserError(
            f"{run.run_dir / 'summary.json'}: quant_accuracy: missing, cannot apply an accuracy budget"
        )
    front = [p for p in run.summary.get("front") or [] if p.get("accuracy") is not None]
    if not front:
        raise UserError(
            f"{run.run_dir / 'summary.json'}: front: empty (the search has not simulated a point yet)"
        )
    floor = q - max_accuracy_loss / 100.0
    ok = [p for p in front if p["accuracy"] >= floor - 1e-12]
    if not ok:
        best = max(front, key=lambda p: (p["accuracy"], -p["energy_rel"]))
        raise UserError(
            f"--max-accuracy-loss {max_accuracy_loss:g}: no front point within {max_accuracy_loss:g} pp of the "
            f"quantized accuracy {100 * q:.2f} %; the best available is trial {best.get('trial')} at "
            f"{100 * best['accuracy']:.2f} % (loss {100 * (q - best['accuracy']):.2f} pp, energy saving "
            f"{100 * (1 - best['energy_rel']):.1f} %)"
        )
    return min(ok, key=lambda p: (p["energy_rel"], -p["accuracy"]))


def export_config(
    run_dir: Path,
    out: Path | None = None,
    *,
    trial: int | None = None,
    max_accuracy_loss: float | None = None,
    library=None,
) -> tuple[Path, dict[str, Any]]:
    """Write the chosen point's configuration (default `RUN_DIR/configs/trial_<N>.json`); return
    (path, configuration)."""
    run = load_run(run_dir)
    point = select_point(run, trial, max_accuracy_loss)
    config = build_config(run, point, library if library is not None else load_library_for(run))
    if out is None:
        tag = point.get("trial")
        out = run.run_dir / "configs" / (f"trial_{tag}.json" if tag is not None else "config.json")
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UserError(f"-o {out}: is a directory; expected a file name such as cfg.json")
    write_config(out, config)
    return out, config
