"""What a finished (or still running) search left in its run directory, read for report and export.

Only JSON/TOML files are read here (no torch): `summary.json` (the search), `study.toml`,
`profiles/predictions.json` (predicted σ / mean per layer × multiplier), `agn/result.json` (learned
tolerances). Anything optional that is missing is listed in `RunData.missing` so the page can say so.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dse.util import UserError, read_json, sha256_file

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BASELINE_NAMES = ("homogeneous", "agn", "random")


@dataclass(frozen=True)
class Predictions:
    """Predicted output-error σ and mean per (layer, multiplier), float output units before bias."""

    sigma: dict[str, dict[str, float]]
    mean: dict[str, dict[str, float]]
    output_std: dict[str, float]

    def get(self, layer: str, multiplier: str) -> tuple[float | None, float | None]:
        return self.sigma.get(layer, {}).get(multiplier), self.mean.get(layer, {}).get(multiplier)


@dataclass(frozen=True)
class AgnTolerance:
    """One AGN λ: learned relative σ_l and the tolerance |σ_l|·std(exact output) per layer."""

    lam: float
    sigma_rel: dict[str, float]
    tolerance: dict[str, float]
    accuracy: float | None
    energy_rel: float | None


@dataclass
class RunData:
    run_dir: Path
    summary: dict[str, Any]
    study: dict[str, Any]
    predictions: Predictions | None
    agn: list[AgnTolerance]
    summary_time: str
    search_space: dict[str, Any] = field(default_factory=dict)
    checkpoint: tuple[str | None, str | None] = (None, None)
    splits_sha256: str | None = None
    quant_params: dict[str, Any] | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def study_name(self) -> str:
        return str(self.summary.get("study") or self.study.get("name") or self.run_dir.name)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.summary.get("layers") or [])

    @property
    def quant_accuracy(self) -> float | None:
        return self.summary.get("quant_accuracy")

    def all_points(self) -> list[dict[str, Any]]:
        """Every distinct point of the run, each once: search points (front included), then baselines.
        A point is identified by (origin group, trial, assignment)."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()

        def add(p: dict[str, Any], group: str) -> None:
            key = json.dumps([group, p.get("trial"), p.get("assignment")], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append({**p, "group": group})

        for p in self.summary.get("points") or []:
            add(p, "search")
        for p in self.summary.get("front") or []:
            add(p, "search")
        for name, base in (self.summary.get("baselines") or {}).items():
            for p in (base or {}).get("points") or []:
                add(p, name)
        return out

    def find_trial(self, trial: int) -> dict[str, Any]:
        for p in self.all_points():
            if p.get("trial") == trial:
                return p
        trials = sorted({p["trial"] for p in self.all_points() if p.get("trial") is not None})
        span = f"{trials[0]}..{trials[-1]}" if trials else "none"
        raise UserError(
            f"--trial {trial}: no such trial in {self.run_dir / 'summary.json'} (trials recorded: {span})"
        )

    def tolerance_for(self, point: dict[str, Any]) -> AgnTolerance | None:
        """The AGN tolerances quoted next to a point's predicted σ: the λ the point was mapped from when it
        is an AGN point, else the largest λ whose AGN network stayed within 1 pp, else the smallest λ."""
        if not self.agn:
            return None
        m = re.match(r"agn\D*?([0-9][0-9.eE+-]*)", str(point.get("origin") or ""))
        if m:
            try:
                lam = float(m.group(1))
            except ValueError:
                lam = None
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


def _read_study(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "study.toml"
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None


def _read_predictions(run_dir: Path) -> Predictions | None:
    path = run_dir / "profiles" / "predictions.json"
    if not path.exists():
        return None
    raw = read_json(path, "predictions")
    if isinstance(raw, dict) and "layers" not in raw:  # {predictor: {...}}: prefer the default predictor
        raw = raw.get("sampled") or next(
            (v for v in raw.values() if isinstance(v, dict) and "layers" in v), None
        )
    if not isinstance(raw, dict) or not {"layers", "multipliers", "sigma"} <= raw.keys():
        raise UserError(f"{path}: expected an object with layers, multipliers, sigma [L][M], mean [L][M]")
    layers, mults = raw["layers"], raw["multipliers"]
    mean = raw.get("mean") or [[None] * len(mults) for _ in layers]
    std = raw.get("output_std") or [None] * len(layers)
    return Predictions(
        sigma={layer: dict(zip(mults, row)) for layer, row in zip(layers, raw["sigma"])},
        mean={layer: dict(zip(mults, row)) for layer, row in zip(layers, mean)},
        output_std=dict(zip(layers, std)),
    )


def _read_agn(run_dir: Path) -> list[AgnTolerance]:
    path = run_dir / "agn" / "result.json"
    if not path.exists():
        return []
    raw = read_json(path, "AGN results")
    items = raw
    if isinstance(raw, dict):
        items = next((v for v in raw.values() if isinstance(v, list)), [])
    out = []
    for r in items:
        if not isinstance(r, dict) or "tolerance" not in r:
            continue
        lam = r.get("lam", r.get("lambda"))
        out.append(
            AgnTolerance(
                lam=float(lam) if lam is not None else float("nan"),
                sigma_rel={k: abs(float(v)) for k, v in (r.get("sigma_rel") or {}).items()},
                tolerance={k: abs(float(v)) for k, v in r["tolerance"].items()},
                accuracy=r.get("accuracy"),
                energy_rel=r.get("energy_rel"),
            )
        )
    return sorted(out, key=lambda a: a.lam)


def _summary_time(path: Path, summary: dict[str, Any]) -> str:
    for key in ("time", "finished_at", "updated_at", "written_at"):
        if isinstance(summary.get(key), str):
            return summary[key]
    ts = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.timezone.utc)
    return ts.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _read_search_space(run_dir: Path, study: dict[str, Any]) -> dict[str, Any]:
    """The study's search space (format, weight scheme, multipliers) as a dict; {} when not found."""
    space = study.get("search_space")
    if isinstance(space, dict):
        return space
    if not isinstance(space, str):
        return {}
    candidates = [run_dir / space, Path(space)]
    try:
        from importlib import resources

        candidates.append(Path(str(resources.files("dse.search_spaces").joinpath(f"{space}.toml"))))
    except (ModuleNotFoundError, TypeError):
        pass
    for path in candidates:
        if path.is_file():
            try:
                return tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError):
                return {}
    return {}


def checkpoint_info(run_dir: Path) -> tuple[str | None, str | None]:
    """(run-relative path, sha256) of the quantized checkpoint the run's accuracies come from."""
    for rel in ("prepare/qat.pt", "prepare/float.pt"):
        if (run_dir / rel).exists():
            return rel, sha256_file(run_dir / rel)
    return None, None


def quant_params(run_dir: Path, layer_names: list[str], space: dict[str, Any], per_channel: bool | None):
    """Per layer: the activation (scale, zero point, observed range) and weight (scale, zero point per output
    channel) quantization parameters of the QAT checkpoint, computed by `dse.quant` from its state_dict.
    None when the checkpoint or the quantization module is not there."""
    ckpt = run_dir / "prepare" / "qat.pt"
    if not ckpt.is_file() or not space.get("format"):
        return None
    try:
        import torch

        from dse.quant import ActivationQuantizer, QuantFormat, weight_qparams

        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state) if isinstance(state, dict) else None
        fmt = QuantFormat.from_names(
            space["format"], space.get("weight_scheme"), True if per_channel is None else per_channel
        )
    except Exception:  # a checkpoint we cannot read here: the configuration says so with null
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


def summary_from_storage(run_dir: Path) -> dict[str, Any] | None:
    """A partial summary of a search still running (no summary.json yet): the completed trials of the
    run's optuna storage (`search/optuna.db`), their front and hypervolume. None when there is none."""
    db = run_dir / "search" / "optuna.db"
    prep_path = run_dir / "prepare" / "result.json"
    if not db.is_file() or not prep_path.is_file():
        return None
    prep = read_json(prep_path, "prepare result")
    layers = [dict(layer) for layer in prep.get("layers") or []]
    names = [layer["name"] for layer in layers]
    import optuna
    from optuna.trial import TrialState

    from dse.search.pareto import hypervolume, pareto_mask

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        studies = optuna.get_all_study_names(storage)
    except Exception as e:  # a locked or foreign file: say so rather than crash
        raise UserError(f"{db}: cannot read the search's optuna storage ({type(e).__name__})") from None
    wanted = _read_study(run_dir).get("name")
    name = wanted if wanted in studies else (studies[0] if len(studies) == 1 else None)
    if name is None or not names:
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    points, seen = [], set()
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        if not t.values or len(t.values) < 2 or any(n not in t.params for n in names):
            continue
        assignment = {n: str(t.params[n]) for n in names}
        key = tuple(assignment.values())
        if key in seen:
            continue
        seen.add(key)
        points.append(
            {
                "trial": t.number,
                "energy_rel": float(t.values[0]),
                "accuracy": float(t.values[1]),
                "test_accuracy": None,
                "assignment": assignment,
                "predicted_accuracy": t.user_attrs.get("predicted_accuracy"),
                "origin": t.user_attrs.get("origin", "nsga2"),
            }
        )
    energy = [p["energy_rel"] for p in points]
    acc = [p["accuracy"] for p in points]
    mask = pareto_mask(energy, acc) if points else []
    step = max(1, len(points) // 20)
    marks = list(range(step, len(points), step)) + ([len(points)] if points else [])
    return {
        "schema_version": 1,
        "study": name,
        "in_progress": True,
        "quant_accuracy": prep.get("quant_accuracy"),
        "quant_test_accuracy": prep.get("quant_test_accuracy"),
        "evaluations": len(points),
        "hypervolume": hypervolume(energy, acc) if points else None,
        "hypervolume_history": [
            {"evaluations": n, "hypervolume": hypervolume(energy[:n], acc[:n])} for n in marks
        ],
        "layers": layers,
        "front": sorted((p for p, m in zip(points, mask) if m), key=lambda p: p["energy_rel"]),
        "points": points,
        "baselines": {},
    }


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; UserError when no search has written its summary yet."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise UserError(
            f"{run_dir}: run directory not found (run `dse search` first; it writes runs/<study>)"
        )
    path = run_dir / "summary.json"
    if path.exists():
        summary = read_json(path, "search summary")
    else:
        summary = summary_from_storage(run_dir)
        if summary is None:
            raise UserError(
                f"{run_dir}: no search results (summary.json) yet; run `dse search` with --out {run_dir} first"
            )
        path = run_dir / "search" / "optuna.db"
    if not isinstance(summary, dict) or not isinstance(summary.get("layers"), list) or not summary["layers"]:
        raise UserError(f"{path}: layers: expected the search summary's non-empty list of layers")
    for key in ("points", "front"):
        if not isinstance(summary.get(key, []), list):
            raise UserError(f"{path}: {key}: expected a list of points")
    run = RunData(
        run_dir=run_dir,
        summary=summary,
        study=_read_study(run_dir),
        predictions=_read_predictions(run_dir),
        agn=_read_agn(run_dir),
        summary_time=_summary_time(path, summary),
    )
    run.search_space = _read_search_space(run_dir, run.study)
    run.checkpoint = checkpoint_info(run_dir)
    run.quant_params = quant_params(
        run_dir,
        [layer["name"] for layer in run.layers],
        run.search_space,
        (run.study.get("train") or {}).get("per_channel"),
    )
    if (run_dir / "splits.json").exists():
        run.splits_sha256 = sha256_file(run_dir / "splits.json")
    if summary.get("in_progress"):
        run.missing.append(
            f"the search is still running: {len(summary['points'])} completed trials read from search/optuna.db; "
            "baselines and test accuracies come with summary.json at its end"
        )
    if run.predictions is None:
        run.missing.append(
            "predicted σ / mean per layer (profiles/predictions.json): written by `dse search` / `dse analyze RUN_DIR`"
        )
    if not run.agn:
        run.missing.append("learned tolerances (agn/result.json): written by `dse search` / `dse agn`")
    if not run.summary.get("baselines"):
        run.missing.append("baselines (the search has not written them yet)")
    if not run.summary.get("hypervolume_history"):
        run.missing.append("hypervolume history (the search has not written it yet)")
    return run
