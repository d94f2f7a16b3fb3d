"""What a finished (or still running) search left in its run directory, read for report and export.

Only JSON/TOML files are read here (no torch): `summary.json` (the search), `study.toml`,
`profiles/predictions.json` (predicted σ / mean per layer × multiplier), `agn/result.json` (learned
tolerances). Anything optional that is missing is listed in `RunData.missing` so the page can say so.
"""

from __future__ import annotations

import datetime as _dt
import json
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
        origin = str(point.get("origin") or "")
        for a in self.agn:
            if origin.startswith("agn") and _fmt_lam(a.lam) in origin:
                return a
        q = self.quant_accuracy
        ok = [
            a for a in self.agn if a.accuracy is not None and q is not None and q - a.accuracy <= 0.01 + 1e-12
        ]
        if ok:
            return max(ok, key=lambda a: a.lam)
        return min(self.agn, key=lambda a: a.lam)


def _fmt_lam(lam: float) -> str:
    return f"{lam:g}"


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


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; UserError when no search has written its summary yet."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise UserError(
            f"{run_dir}: run directory not found (run `dse search` first; it writes runs/<study>)"
        )
    path = run_dir / "summary.json"
    if not path.exists():
        raise UserError(
            f"{run_dir}: no search results (summary.json) yet; run `dse search` with --out {run_dir} first"
        )
    summary = read_json(path, "search summary")
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
    if (run_dir / "splits.json").exists():
        run.splits_sha256 = sha256_file(run_dir / "splits.json")
    if run.predictions is None:
        run.missing.append(
            "predicted σ / mean per layer (profiles/predictions.json): run `dse analyze RUN_DIR`"
        )
    if not run.agn:
        run.missing.append("learned tolerances (agn/result.json): run `dse agn`")
    if not run.summary.get("baselines"):
        run.missing.append("baselines (the search has not written them yet)")
    if not run.summary.get("hypervolume_history"):
        run.missing.append("hypervolume history (the search has not written it yet)")
    return run
