"""The run directory: the one place that knows where each stage's files live, and the stage cache.

Layout (docs/ARCHITECTURE.md):

    study.toml            the study, validated, every path absolute (later commands need only the run dir)
    splits.json           seed, sizes and sha256 of the data and of each split's indices
    prepare/              float.pt, qat.pt, result.json (`dse.prepare`); *.partial.pt while training
    profiles/             profiles.npz, predictions.json (`dse.errors`)
    agn/                  lambda_<λ>.json per λ, result.json (`dse.agn`); *.partial.pt while training
    search/optuna.db      the search's trials (`dse.search`)
    summary.json          the search's result
    report.html           the Pareto page (`dse.report`)
    configs/              exported hardware configs
    retrain/<hash>/       retraining of one assignment (`dse.retrain`)

Each stage stores the sha256 of its inputs (`stage_key`) next to its output; a stage whose key is unchanged
is loaded, not recomputed (`read_stage_json` / `read_stage_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dse.study import Study, load_study
from dse.util import UNREADABLE_CHECKPOINT, UserError, atomic_write_json, atomic_write_text, load_checkpoint

__all__ = ["RunDir", "stage_key"]


def stage_key(*parts: Any) -> str:
    """sha256 of the canonical JSON of a stage's inputs (config sections, data identity, upstream keys)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def lambda_tag(lam: float) -> str:
    """How a λ appears in file names: `0.5`, `1e-05`; a minus sign becomes `m`."""
    return f"{lam:g}".replace("-", "m")


class RunDir:
    """Paths of one run directory (default runs/<study name>) and the stage cache helpers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---- top level
    @property
    def study_toml(self) -> Path:
        return self.path / "study.toml"

    @property
    def splits_json(self) -> Path:
        return self.path / "splits.json"

    @property
    def summary_json(self) -> Path:
        return self.path / "summary.json"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    # ---- prepare/
    @property
    def prepare_dir(self) -> Path:
        return self.path / "prepare"

    @property
    def float_ckpt(self) -> Path:
        return self.prepare_dir / "float.pt"

    @property
    def qat_ckpt(self) -> Path:
        return self.prepare_dir / "qat.pt"

    @property
    def float_partial(self) -> Path:
        """Float training's resume checkpoint (exists only while it runs or after a kill)."""
        return self.prepare_dir / "float.partial.pt"

    @property
    def qat_partial(self) -> Path:
        """QAT's resume checkpoint (exists only while it runs or after a kill)."""
        return self.prepare_dir / "qat.partial.pt"

    @property
    def result_json(self) -> Path:
        """The prepare stage's result (`dse.prepare.PrepareResult`)."""
        return self.prepare_dir / "result.json"

    # ---- profiles/
    @property
    def profiles_dir(self) -> Path:
        return self.path / "profiles"

    @property
    def profiles_npz(self) -> Path:
        return self.profiles_dir / "profiles.npz"

    @property
    def predictions_json(self) -> Path:
        return self.profiles_dir / "predictions.json"

    # ---- agn/
    @property
    def agn_dir(self) -> Path:
        return self.path / "agn"

    @property
    def agn_result_json(self) -> Path:
        return self.agn_dir / "result.json"

    def agn_lambda_json(self, lam: float) -> Path:
        """One λ's AGN point."""
        return self.agn_dir / f"lambda_{lambda_tag(lam)}.json"

    def agn_partial(self, lam: float) -> Path:
        """One λ's AGN-training resume checkpoint (exists only while it runs or after a kill)."""
        return self.agn_dir / f"lambda_{lambda_tag(lam)}.partial.pt"

    # ---- search, configs, retrain
    @property
    def search_dir(self) -> Path:
        return self.path / "search"

    @property
    def optuna_db(self) -> Path:
        return self.search_dir / "optuna.db"

    @property
    def configs_dir(self) -> Path:
        return self.path / "configs"

    def config_json(self, trial: int | None = None) -> Path:
        """An exported config: configs/trial_<n>.json, or configs/config.json for one not from a trial."""
        return self.configs_dir / (f"trial_{trial}.json" if trial is not None else "config.json")

    @property
    def retrain_dir(self) -> Path:
        return self.path / "retrain"

    def retrain_run_dir(self, config_hash: str) -> Path:
        """The retraining of one assignment (checkpoint, result, error statistics)."""
        return self.retrain_dir / config_hash

    # ---- the study
    def is_run_dir(self) -> bool:
        return self.study_toml.is_file()

    def read_study(self) -> Study:
        if not self.study_toml.is_file():
            raise UserError(f"{self.path}: not a run directory (no study.toml); run `dse prepare` first")
        return load_study(self.study_toml)

    def write_study(self, study: Study) -> None:
        atomic_write_text(self.study_toml, study.to_toml())

    # ---- the stage cache
    def read_stage_json(self, path: Path, key: str) -> dict[str, Any] | None:
        """The JSON a stage stored at `path`, if its `inputs_sha256` equals `key` (else None)."""
        try:
            obj = json.loads(Path(path).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return obj if isinstance(obj, dict) and obj.get("inputs_sha256") == key else None

    def write_stage_json(self, path: Path, key: str, obj: dict[str, Any]) -> None:
        atomic_write_json(path, {**obj, "inputs_sha256": key})

    def read_stage_checkpoint(self, path: Path, key: str) -> dict[str, Any] | None:
        """A torch checkpoint dict a stage stored at `path`, if its `inputs_sha256` equals `key`."""
        if not Path(path).is_file():
            return None
        try:
            obj = load_checkpoint(path, "stage checkpoint")
        except UserError:
            raise  # a crafted checkpoint is refused, not silently recomputed
        except UNREADABLE_CHECKPOINT:  # a truncated or stale file is recomputed
            return None
        return obj if isinstance(obj, dict) and obj.get("inputs_sha256") == key else None
