"""What a finished (or still running) search left in its run directory, read for report and export.

`read_results(run_dir)` reads the search's typed summary (`summary.json`, or, while the search still
runs, the completed trials of its optuna storage through `dse.search.summary.summary_from_storage`),
`study.toml`, the σ predictions (`profiles/predictions.json`), the learned AGN tolerances
(`agn/result.json`), and the QAT checkpoint's quantization parameters (loaded with torch). Anything
optional that is missing is listed in `RunResults.missing` so the page can say so. It loads no model:
`dse.prepare.load_prepared` is what rebuilds the prepared model.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dse.agn import AgnResult
from dse.errors.predict import Predictions
from dse.prepare.records import PreparedLayer
from dse.rundir import RunDir
from dse.search.records import BASELINE_NAMES, SearchPoint, Summary
from dse.search.summary import summary_from_storage
from dse.util import UNREADABLE_CHECKPOINT, UserError, load_checkpoint, read_json, sha256_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["BASELINE_NAMES", "GroupedPoint", "RunResults", "read_results"]


@dataclass(frozen=True)
class GroupedPoint:
    """A point of the run and the group it is shown in: "search" or a baseline's name."""

    point: SearchPoint
    group: str


@dataclass(frozen=True)
class RunResults:
    """A run directory's results as report and export read them: the typed summary, the study TOML
    (as written), the σ predictions and AGN results when there, the quantized checkpoint's identity and
    parameters, and what is `missing` (for the page to say)."""

    run_dir: Path
    summary: Summary
    study: Mapping[str, Any]
    predictions: Predictions | None
    agn: tuple[AgnResult, ...]  # by λ; a learned σ_l may have either sign: quote magnitudes
    summary_time: str
    search_space: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: tuple[str | None, str | None] = (None, None)
    splits_sha256: str | None = None
    quant_params: dict[str, Any] | None = None
    missing: tuple[str, ...] = ()

    @property
    def study_name(self) -> str:
        return str(self.summary.study or self.study.get("name") or self.run_dir.name)

    @property
    def layers(self) -> tuple[PreparedLayer, ...]:
        return self.summary.layers

    @property
    def library_dir(self) -> str | None:
        """The user library directory the run's search space names (absolute), or None."""
        lib = self.search_space.get("library")
        return lib if isinstance(lib, str) else None

    @property
    def quant_accuracy(self) -> float | None:
        return self.summary.quant_accuracy

    def all_points(self) -> list[GroupedPoint]:
        """Every distinct point of the run, each once: search points (front included), then baselines.
        A point is identified by (origin group, trial, assignment)."""
        out: list[GroupedPoint] = []
        seen: set[str] = set()

        def add(p: SearchPoint, group: str) -> None:
            key = json.dumps([group, p.trial, dict(p.assignment)], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(GroupedPoint(p, group))

        for p in self.summary.points:
            add(p, "search")
        for p in self.summary.front:
            add(p, "search")
        for name, base in self.summary.baselines.items():
            if name == "random_with_seeds":  # the seeds and the random points, each shown already
                continue
            for p in base.points:
                add(p, name)
        return out

    def find_trial(self, trial: int) -> SearchPoint:
        points = [g.point for g in self.all_points()]
        for p in points:
            if p.trial == trial:
                return p
        trials = sorted({p.trial for p in points if p.trial is not None})
        span = f"{trials[0]}..{trials[-1]}" if trials else "none"
        raise UserError(
            f"--trial {trial}: no such trial in {RunDir(self.run_dir).summary_json} (trials recorded: {span})"
        )

    def tolerance_for(self, point: SearchPoint) -> AgnResult | None:
        """The AGN tolerances quoted next to a point's predicted σ: the λ the point was mapped from when it
        is an AGN point, else the largest λ whose AGN network stayed within 1 pp, else the smallest λ."""
        if not self.agn:
            return None
        lam = point.origin.lam if point.origin.kind == "agn" else None
        for a in self.agn:
            if lam is not None and math.isclose(a.lam, lam, rel_tol=1e-9):
                return a
        q = self.quant_accuracy
        ok = [
            a for a in self.agn if a.accuracy is not None and q is not None and q - a.accuracy <= 0.01 + 1e-12
        ]
        if ok:
            return max(ok, key=lambda a: a.lam)
        return min(self.agn, key=lambda a: a.lam)

    def predicted(self, layer: str, multiplier: str) -> tuple[float | None, float | None]:
        """(σ, mean) predicted for a multiplier at a layer (float output units before bias), if known."""
        pred = self.predictions
        if pred is None or layer not in pred.layers or multiplier not in pred.multipliers:
            return None, None
        i, j = pred.layers.index(layer), pred.multipliers.index(multiplier)
        return float(pred.sigma[i, j]), float(pred.mean[i, j])


def _read_study(run: RunDir) -> dict[str, Any]:
    path = run.study_toml
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None


def _read_predictions(run: RunDir) -> Predictions | None:
    """The default predictor's table of `profiles/predictions.json` ({predictor: table}), else the first."""
    path = run.predictions_json
    if not path.exists():
        return None
    raw = read_json(path, "predictions")
    tables = [raw.get("sampled")] + list(raw.values()) if isinstance(raw, dict) else []
    table = next((t for t in tables if isinstance(t, dict) and "layers" in t), None)
    if table is None:
        raise UserError(
            f"{path}: expected {{predictor: {{layers, multipliers, sigma [L][M], mean [L][M], …}}}}"
        )
    try:
        return Predictions.from_json(table)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a prediction table ({type(e).__name__}: {e})") from None


def _read_agn(run: RunDir) -> tuple[AgnResult, ...]:
    """The learned tolerances of `agn/result.json` (what `dse agn` writes: {"results": [AgnResult]})."""
    path = run.agn_result_json
    if not path.exists():
        return ()
    raw = read_json(path, "AGN results")
    try:
        results = [AgnResult.from_json(r) for r in raw["results"]]
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: results: expected the AGN results ({type(e).__name__}: {e})") from None
    return tuple(sorted(results, key=lambda a: a.lam))


def _mtime(path: Path) -> str:
    """The file's modification time, UTC, ISO 8601 (when the summary was written)."""
    ts = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.timezone.utc)
    return ts.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _read_search_space(run: RunDir, study: Mapping[str, Any]) -> dict[str, Any]:
    """The study's search space (format, weight scheme, multipliers) as a dict; {} when not found."""
    space = study.get("search_space")
    if isinstance(space, dict):
        return space
    if not isinstance(space, str):
        return {}
    builtin = Path(str(resources.files("dse.search_spaces").joinpath(f"{space}.toml")))
    for path in (run.path / space, Path(space), builtin):
        if path.is_file():
            try:
                loaded = tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError):
                return {}
            lib = loaded.get("library")
            if isinstance(lib, str):  # the space's user library, relative to the space file
                loaded["library"] = str((path.parent / Path(lib).expanduser()).resolve())
            return loaded
    return {}


def checkpoint_info(run: RunDir) -> tuple[str | None, str | None]:
    """(run-relative path, sha256) of the quantized checkpoint the run's accuracies come from."""
    for path in (run.qat_ckpt, run.float_ckpt):
        if path.exists():
            return path.relative_to(run.path).as_posix(), sha256_file(path)
    return None, None


def quant_params(
    run: RunDir, layer_names: list[str], space: Mapping[str, Any], per_channel: bool | None
) -> dict[str, Any] | None:
    """Per layer: the activation (scale, zero point, observed range) and weight (scale, zero point per output
    channel) quantization parameters of the QAT checkpoint, computed by `dse.quant` from its state_dict.
    None when there is no checkpoint (or one torch cannot read)."""

    from dse.quant import ActivationQuantizer, QuantFormat, weight_qparams

    ckpt = run.qat_ckpt
    if not ckpt.is_file() or not space.get("format"):
        return None
    try:
        state = load_checkpoint(ckpt, "QAT checkpoint")
        state = state.get("state_dict", state) if isinstance(state, dict) else None
        fmt = QuantFormat.from_names(
            space["format"], space.get("weight_scheme"), True if per_channel is None else per_channel
        )
    except UserError:
        raise  # a crafted checkpoint is refused
    except UNREADABLE_CHECKPOINT:
        # a checkpoint we cannot read here (truncated, another format): the configuration says so with null
        return None
    if not isinstance(state, dict):
        return None
    out = {}
    for name in layer_names:
        lo, hi = state.get(f"{name}.act_quant.running_min"), state.get(f"{name}.act_quant.running_max")
        w = state.get(f"{name}.weight")
        if lo is None or hi is None or w is None:
            continue
        aq = ActivationQuantizer(fmt)
        aq.running_min.copy_(lo)
        aq.running_max.copy_(hi)
        a_scale, a_zp = aq.qparams()
        w_scale, w_zp = weight_qparams(w.float(), fmt)
        out[name] = {
            "activation": {
                "scale": float(a_scale),
                "zero_point": int(round(float(a_zp))),
                "rule": aq.rule,
                "observed_min": float(lo),
                "observed_max": float(hi),
            },
            "weight": {
                "scale": [float(v) for v in w_scale.reshape(-1)],
                "zero_point": [int(round(float(v))) for v in w_zp.reshape(-1)],
            },
        }
    return out or None


def read_summary(run_dir: Path) -> tuple[Summary, Path]:
    """The run's summary and the file it was read from (summary.json, or the optuna storage of a search
    still running); UserError when no search has written anything yet."""
    run = RunDir(run_dir)
    path = run.summary_json
    if path.exists():
        return Summary.from_json(read_json(path, "search summary"), where=str(path)), path
    partial = summary_from_storage(run.path, _read_study(run).get("name"))
    if partial is None:
        raise UserError(
            f"{run.path}: no search results (summary.json) yet; run `dse search` with --out {run.path} first"
        )
    return partial, run.optuna_db


def read_results(run_dir: Path) -> RunResults:
    """Read a run directory's results; UserError when no search has written its summary yet."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise UserError(
            f"{run_dir}: run directory not found (run `dse search` first; it writes runs/<study>)"
        )
    run = RunDir(run_dir)
    summary, path = read_summary(run_dir)
    study = _read_study(run)
    predictions = _read_predictions(run)
    agn = _read_agn(run)
    space = _read_search_space(run, study)
    missing = []
    if summary.in_progress:
        missing.append(
            f"the search is still running: {len(summary.points)} completed trials read from search/optuna.db; "
            "baselines and test accuracies come with summary.json at its end"
        )
    if predictions is None:
        missing.append(
            "predicted σ / mean per layer (profiles/predictions.json): written by `dse search` / `dse analyze RUN_DIR`"
        )
    if not agn:
        missing.append("learned tolerances (agn/result.json): written by `dse search` / `dse agn`")
    if not summary.baselines:
        missing.append("baselines (the search has not written them yet)")
    if not summary.hypervolume_history:
        missing.append("hypervolume history (the search has not written it yet)")
    return RunResults(
        run_dir=run_dir,
        summary=summary,
        study=study,
        predictions=predictions,
        agn=agn,
        summary_time=_mtime(path),
        search_space=space,
        checkpoint=checkpoint_info(run),
        splits_sha256=sha256_file(run.splits_json) if run.splits_json.exists() else None,
        quant_params=quant_params(
            run,
            [layer.name for layer in summary.layers],
            space,
            (study.get("train") or {}).get("per_channel"),
        ),
        missing=tuple(missing),
    )
