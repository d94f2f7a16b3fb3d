"""The search's typed records: a candidate's origin, a simulated point, a failed simulation, and the
summary (`summary.json`, docs/ARCHITECTURE.md "summary.json").

`to_json()` gives exactly the objects written to summary.json (same keys, same order, same values);
`from_json()` reads them back, also from the shorter summaries of older runs or of a search still running
(optional keys missing), so the report and export read one typed summary and never parse JSON by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dse.prepare.records import PreparedLayer
from dse.search.pareto import pareto_mask
from dse.util import UserError

Genome = tuple[str, ...]
SCHEMA_VERSION = 1
BASELINE_NAMES = ("homogeneous", "agn", "random")  # the page's groups; "random_with_seeds" (summary
# only) is the seeds plus the random points, each already one of these


@dataclass(frozen=True)
class Origin:
    """Where a candidate came from: `kind` (exact, agn, surrogate, homogeneous, nsga2, random,
    random-restart, …) and, for an AGN mapping, the regularisation strength λ it was mapped at.
    JSON form: the kind, or "kind:λ" with λ in `%g` (e.g. "agn:0.5")."""

    kind: str
    lam: float | None = None

    @classmethod
    def agn(cls, lam: float) -> Origin:
        return cls("agn", float(lam))

    def to_json(self) -> str:
        return self.kind if self.lam is None else f"{self.kind}:{self.lam:g}"

    @classmethod
    def from_json(cls, text: str) -> Origin:
        kind, sep, lam = str(text).partition(":")
        if sep:
            try:
                return cls(kind, float(lam))
            except ValueError:
                pass
        return cls(str(text))


@dataclass(frozen=True)
class SearchPoint:
    """One simulated candidate. `assignment` is {layer: multiplier} in the problem's layer order, so its
    values are the genome. Accuracies are fractions; `accuracy` is on the validation split (None only in a
    summary of a search still running, for a trial not finished yet). `images`: validation images
    simulated for it (None: not recorded); `partial`: rejected early, `accuracy` is that of the first
    `images` (never a front point)."""

    trial: int | None
    energy_rel: float
    accuracy: float | None
    test_accuracy: float | None
    assignment: Mapping[str, str]
    predicted_accuracy: float | None
    origin: Origin
    images: int | None = None
    partial: bool = False

    @property
    def genome(self) -> Genome:
        return tuple(self.assignment.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "energy_rel": self.energy_rel,
            "accuracy": self.accuracy,
            "test_accuracy": self.test_accuracy,
            "assignment": dict(self.assignment),
            "predicted_accuracy": self.predicted_accuracy,
            "origin": self.origin.to_json(),
            "images": self.images,
            "partial": self.partial,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SearchPoint:
        return cls(
            trial=obj.get("trial"),
            energy_rel=obj["energy_rel"],
            accuracy=obj.get("accuracy"),
            test_accuracy=obj.get("test_accuracy"),
            assignment=dict(obj.get("assignment") or {}),
            predicted_accuracy=obj.get("predicted_accuracy"),
            origin=Origin.from_json(obj.get("origin") or ""),
            images=obj.get("images"),
            partial=bool(obj.get("partial", False)),
        )


@dataclass(frozen=True)
class SimulationFailure:
    """A simulation that raised: the exception's type and message (what the search stores as the
    trial's `error` attribute), instead of the exception object itself."""

    error_type: str
    message: str

    @classmethod
    def of(cls, error: BaseException) -> SimulationFailure:
        return cls(type(error).__name__, str(error))

    def __str__(self) -> str:
        """One line of at most 500 characters, as stored in the optuna trial."""
        return f"{self.error_type}: {self.message}".splitlines()[0][:500]


@dataclass(frozen=True)
class HypervolumeMark:
    """The search's hypervolume after `evaluations` candidates, which had spent `simulations` of the
    budget (full-split equivalents; None when not recorded)."""

    evaluations: int
    hypervolume: float
    simulations: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "evaluations": self.evaluations,
            "hypervolume": self.hypervolume,
            "simulations": self.simulations,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> HypervolumeMark:
        return cls(int(obj["evaluations"]), obj["hypervolume"], obj.get("simulations"))


@dataclass(frozen=True)
class Fallback:
    """A stage that failed while the search carried on without it (no silent fallbacks): which stage,
    the error (type and message, one line) and what the search did instead. In summary.json
    `fallbacks` and shown on the report page."""

    stage: str
    error: str
    effect: str

    @classmethod
    def of(cls, stage: str, exc: BaseException, effect: str) -> Fallback:
        message = " ".join(str(exc).split())
        return cls(stage, f"{type(exc).__name__}: {message}" if message else type(exc).__name__, effect)

    def to_json(self) -> dict[str, str]:
        return {"stage": self.stage, "error": self.error, "effect": self.effect}

    @classmethod
    def from_json(cls, obj: Any) -> Fallback:
        return cls(str(obj["stage"]), str(obj["error"]), str(obj["effect"]))


@dataclass(frozen=True)
class Baseline:
    """A reference strategy's points, their hypervolume, and its best energy saving within 1 pp of the
    quantized accuracy judged on validation and on test (test: the points' test accuracy against the
    quantized test accuracy)."""

    hypervolume: float | None
    points: tuple[SearchPoint, ...]
    best_saving_within_1pp: float | None = None
    best_saving_within_1pp_test: float | None = None
    simulated_images: int | None = None  # validation images its points cost (None: not recorded)

    def to_json(self) -> dict[str, Any]:
        return {
            "hypervolume": self.hypervolume,
            "best_saving_within_1pp": self.best_saving_within_1pp,
            "best_saving_within_1pp_test": self.best_saving_within_1pp_test,
            "simulated_images": self.simulated_images,
            "points": [p.to_json() for p in self.points],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Baseline:
        return cls(
            obj.get("hypervolume"),
            tuple(SearchPoint.from_json(p) for p in obj.get("points") or []),
            obj.get("best_saving_within_1pp"),
            obj.get("best_saving_within_1pp_test"),
            obj.get("simulated_images"),
        )


@dataclass(frozen=True)
class Targets:
    """The headline figures of a run: best energy savings within 1 pp of the quantized accuracy, their
    ratio, and the median validation→test gap of the front's losses. The `_test` figures judge the same
    front points by their test accuracy against the quantized test accuracy (the honest headline: the
    front was chosen on validation)."""

    best_saving_within_1pp: float
    best_homogeneous_saving_within_1pp: float
    best_agn_saving_within_1pp: float | None
    saving_ratio_vs_homogeneous: float | None
    median_test_minus_val_loss: float | None
    best_saving_within_1pp_test: float | None = None
    best_homogeneous_saving_within_1pp_test: float | None = None
    saving_ratio_vs_homogeneous_test: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "best_saving_within_1pp": self.best_saving_within_1pp,
            "best_homogeneous_saving_within_1pp": self.best_homogeneous_saving_within_1pp,
            "best_agn_saving_within_1pp": self.best_agn_saving_within_1pp,
            "saving_ratio_vs_homogeneous": self.saving_ratio_vs_homogeneous,
            "median_test_minus_val_loss": self.median_test_minus_val_loss,
            "best_saving_within_1pp_test": self.best_saving_within_1pp_test,
            "best_homogeneous_saving_within_1pp_test": self.best_homogeneous_saving_within_1pp_test,
            "saving_ratio_vs_homogeneous_test": self.saving_ratio_vs_homogeneous_test,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Targets:
        return cls(
            obj.get("best_saving_within_1pp", 0.0),
            obj.get("best_homogeneous_saving_within_1pp", 0.0),
            obj.get("best_agn_saving_within_1pp"),
            obj.get("saving_ratio_vs_homogeneous"),
            obj.get("median_test_minus_val_loss"),
            obj.get("best_saving_within_1pp_test"),
            obj.get("best_homogeneous_saving_within_1pp_test"),
            obj.get("saving_ratio_vs_homogeneous_test"),
        )


@dataclass(frozen=True)
class Summary:
    """What a search leaves in summary.json. `points` holds every simulated candidate (trial order),
    `front` the non-dominated ones among them (energy order), `baselines` the reference strategies.
    `layers` are the prepared run's (`dse.prepare.records.PreparedLayer`, as in prepare/result.json).
    `in_progress`: read from the optuna storage of a search still running (never written)."""

    study: str
    quant_accuracy: float | None
    quant_test_accuracy: float | None
    evaluations: int
    layers: tuple[PreparedLayer, ...]
    front: tuple[SearchPoint, ...]
    points: tuple[SearchPoint, ...]
    baselines: Mapping[str, Baseline] = field(default_factory=dict)
    quant_accuracy_simulated: float | None = None
    budget: int | None = None
    seconds: float | None = None
    simulations_per_second: float | None = None
    outside_simulation_share: float | None = None
    surrogate_kendall_tau: float | None = None
    surrogate_kendall_tau_in_sample: float | None = None
    hypervolume: float | None = None
    hypervolume_by_origin: Mapping[str, float] = field(default_factory=dict)
    hypervolume_history: tuple[HypervolumeMark, ...] = ()
    simulated_images: int | None = None
    simulated_images_per_front_point: float | None = None
    rejected_early: int | None = None
    budget_share_to_95pct_hypervolume: float | None = None
    targets: Targets | None = None
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    storage: str | None = None
    optuna_study: str | None = None
    fallbacks: tuple[Fallback, ...] = ()
    requeued_trials: int | None = None  # trials asked again because their worker died (kill, lost host)
    in_progress: bool = False
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The summary.json object (key order as written since schema version 1)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "study": self.study,
            "quant_accuracy": self.quant_accuracy,
            "quant_test_accuracy": self.quant_test_accuracy,
            "quant_accuracy_simulated": self.quant_accuracy_simulated,
            "evaluations": self.evaluations,
            "budget": self.budget,
            "seconds": self.seconds,
            "simulations_per_second": self.simulations_per_second,
            "outside_simulation_share": self.outside_simulation_share,
            "surrogate_kendall_tau": self.surrogate_kendall_tau,
            "surrogate_kendall_tau_in_sample": self.surrogate_kendall_tau_in_sample,
            "hypervolume": self.hypervolume,
            "hypervolume_by_origin": dict(self.hypervolume_by_origin),
            "hypervolume_history": [h.to_json() for h in self.hypervolume_history],
            "simulated_images": self.simulated_images,
            "simulated_images_per_front_point": self.simulated_images_per_front_point,
            "rejected_early": self.rejected_early,
            "budget_share_to_95pct_hypervolume": self.budget_share_to_95pct_hypervolume,
            "layers": [layer.to_json() for layer in self.layers],
            "front": [p.to_json() for p in self.front],
            "points": [p.to_json() for p in self.points],
            "baselines": {k: b.to_json() for k, b in self.baselines.items()},
            "targets": None if self.targets is None else self.targets.to_json(),
            "stage_seconds": dict(self.stage_seconds),
            "storage": self.storage,
            "optuna_study": self.optuna_study,
            "fallbacks": [f.to_json() for f in self.fallbacks],
            "requeued_trials": self.requeued_trials,
        }
        if self.in_progress:
            out["in_progress"] = True
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "summary.json") -> Summary:
        """A summary object read from JSON; UserError naming the field when it is not one."""
        if not isinstance(obj, dict) or not isinstance(obj.get("layers"), list) or not obj["layers"]:
            raise UserError(f"{where}: layers: expected the search summary's non-empty list of layers")
        for key in ("points", "front"):
            if not isinstance(obj.get(key, []), list):
                raise UserError(f"{where}: {key}: expected a list of points")
        targets = obj.get("targets")
        try:
            return cls(
                study=str(obj.get("study") or ""),
                quant_accuracy=obj.get("quant_accuracy"),
                quant_test_accuracy=obj.get("quant_test_accuracy"),
                evaluations=int(obj.get("evaluations", len(obj.get("points") or []))),
                layers=tuple(PreparedLayer.from_json(layer) for layer in obj["layers"]),
                front=tuple(SearchPoint.from_json(p) for p in obj.get("front") or []),
                points=tuple(SearchPoint.from_json(p) for p in obj.get("points") or []),
                baselines={k: Baseline.from_json(b or {}) for k, b in (obj.get("baselines") or {}).items()},
                quant_accuracy_simulated=obj.get("quant_accuracy_simulated"),
                budget=obj.get("budget"),
                seconds=obj.get("seconds"),
                simulations_per_second=obj.get("simulations_per_second"),
                outside_simulation_share=obj.get("outside_simulation_share"),
                surrogate_kendall_tau=obj.get("surrogate_kendall_tau"),
                surrogate_kendall_tau_in_sample=obj.get("surrogate_kendall_tau_in_sample"),
                hypervolume=obj.get("hypervolume"),
                hypervolume_by_origin=dict(obj.get("hypervolume_by_origin") or {}),
                simulated_images=obj.get("simulated_images"),
                simulated_images_per_front_point=obj.get("simulated_images_per_front_point"),
                rejected_early=obj.get("rejected_early"),
                budget_share_to_95pct_hypervolume=obj.get("budget_share_to_95pct_hypervolume"),
                hypervolume_history=tuple(
                    HypervolumeMark.from_json(h) for h in obj.get("hypervolume_history") or []
                ),
                targets=Targets.from_json(targets) if isinstance(targets, dict) else None,
                stage_seconds=dict(obj.get("stage_seconds") or {}),
                storage=obj.get("storage"),
                optuna_study=obj.get("optuna_study"),
                fallbacks=tuple(Fallback.from_json(f) for f in obj.get("fallbacks") or []),
                requeued_trials=obj.get("requeued_trials"),
                in_progress=bool(obj.get("in_progress", False)),
                schema_version=int(obj.get("schema_version", SCHEMA_VERSION)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{where}: not a search summary ({type(e).__name__}: {e})") from None


def front_of(points: Sequence[SearchPoint]) -> list[int]:
    """Indices of the non-dominated complete points (lower energy, higher accuracy), in energy order; of
    identical points only the first."""
    full = [i for i, p in enumerate(points) if not p.partial]  # a partial point is never on the front
    if not full:
        return []
    mask = pareto_mask([points[i].energy_rel for i in full], [points[i].accuracy or 0.0 for i in full])
    return sorted((i for i, m in zip(full, mask) if m), key=lambda i: points[i].energy_rel)
