"""The AGN stage: learned per-layer noise tolerances (P3's gradient search; docs/REFERENCES.md, "P3: AGN").

Each approximable layer in `agn` mode adds n = z·std(y)·σ_l to its output before the bias, in training
only (dse.nn). Weights and the σ_l are trained together from the QAT checkpoint, by the one training loop
(`dse.train.fit`, the σ_l in their own parameter group), with

    L = CE − λ·Σ_l (MACs_l / Σ MACs)·min(|σ_l|, σ_max)

so noise is rewarded in proportion to a layer's share of the multiplications, capped at σ_max. The
learned tolerance of layer l is |σ_l|·std(exact layer output); `dse.errors.mapping.map_assignment` turns
it into a multiplier per layer, and the assignment's accuracy is measured by behavioural simulation
(`dse.simulation`).

Run directory: agn/lambda_<λ>.json per λ (keyed twice: `sigma_key` for the training, `inputs_sha256`
for the mapping, so a new search space or rule maps the learned σ again without retraining),
agn/result.json for all λ; an interrupted training resumes from agn/lambda_<λ>.partial.pt.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dse.energy import energy_rel, mac_shares
from dse.errors.mapping import RULES, map_assignment
from dse.errors.predict import get_predictions
from dse.multipliers import Multiplier
from dse.nn import Mode, approx_layers, set_mode
from dse.prepare import Prepared
from dse.rundir import stage_key
from dse.simulation import simulate_accuracy
from dse.train import ParamGroup, evaluate_accuracy, fit
from dse.util import UserError, atomic_write_json, sha256_file

__all__ = [
    "AgnResult",
    "DEFAULT_RULE",
    "SIGMA_LR_FACTOR",
    "agn_regulariser",
    "check_agn_settings",
    "get_agn_results",
    "train_agn",
]

DEFAULT_RULE = "bias-aware"
# Adam moves a parameter by about lr per step whatever its gradient: the σ_l get a larger step than the
# weights so that a few epochs can move them by O(0.1..1) (P3 trains both with SGD lr 0.1).
SIGMA_LR_FACTOR = 20.0


def agn_regulariser(
    sigmas: Sequence[torch.Tensor], shares: Sequence[float], lam: float, sigma_max: float
) -> torch.Tensor:
    """−λ·Σ_l share_l·min(|σ_l|, σ_max), a torch scalar differentiable in the σ_l.

    ∂/∂σ_l = −λ·share_l·sign(σ_l) while |σ_l| < σ_max, 0 above it (docs/REFERENCES.md, T13).
    """
    terms = [
        float(s) * torch.clamp(torch.abs(sig), max=float(sigma_max)).sum() for sig, s in zip(sigmas, shares)
    ]
    return -float(lam) * torch.stack(terms).sum()


def check_agn_settings(lambdas: Sequence[float], sigma_max: float, sigma_init: float | None = None) -> None:
    """UserError on λ < 0, σ_max ≤ 0, σ_init < 0 (or non-finite values)."""
    if not lambdas:
        raise UserError("--lambda / [agn] lambdas: expected at least one value ≥ 0")
    for lam in lambdas:
        if not math.isfinite(lam) or lam < 0:
            raise UserError(f"--lambda / [agn] lambdas: expected values ≥ 0, got {lam}")
    if not math.isfinite(sigma_max) or sigma_max <= 0:
        raise UserError(f"[agn] sigma_max: expected a value > 0, got {sigma_max}")
    if sigma_init is not None and (not math.isfinite(sigma_init) or sigma_init < 0):
        raise UserError(f"[agn] sigma_init: expected a value ≥ 0, got {sigma_init}")


@dataclass(frozen=True)
class AgnResult:
    """One AGN point: λ, learned σ_l (relative to the layer's output std), tolerance |σ_l|·std(exact
    output) in float output units before bias, the mapped multiplier per layer, its energy_rel and its
    accuracy on the validation split by behavioural simulation (`lut` mode). `rule` and `predictor`
    say how the mapping was made; `agn_accuracy` is the AGN model's clean accuracy (eval mode);
    `alternatives`: per other rule, {"assignment", "energy_rel", "accuracy"} of its mapping."""

    lam: float
    sigma_rel: dict[str, float]
    tolerance: dict[str, float]
    assignment: dict[str, str]
    energy_rel: float
    accuracy: float
    rule: str = DEFAULT_RULE
    predictor: str = "sampled"
    agn_accuracy: float | None = None
    alternatives: dict[str, dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> AgnResult:
        """From the JSON document; keys that are not fields (a stored `sigma_key`, ...) are ignored."""
        return AgnResult(**{k: v for k, v in d.items() if k in _FIELDS})


_FIELDS = set(AgnResult.__dataclass_fields__)


def train_agn(
    prepared: Prepared,
    lam: float,
    sigma_init: float,
    sigma_max: float,
    epochs: int,
    lr: float,
    seed: int = 0,
    sigma_lr: float | None = None,
    *,
    resume_key: str = "",
) -> tuple[dict[str, float], float]:
    """Train a copy of the prepared (QAT) model in `agn` mode, weights and σ_l together, with the
    regulariser. Returns ({layer: |σ_l|}, clean accuracy of the AGN model on the validation split).
    With `resume_key`, the training resumes from agn/lambda_<λ>.partial.pt when that holds the same key."""
    model = copy.deepcopy(prepared.model)
    layers = approx_layers(model)
    shares = mac_shares({n: int(layer.macs or 0) or 1 for n, layer in layers.items()})
    for layer in layers.values():
        layer.freeze_ranges = True
        with torch.no_grad():
            layer.agn_sigma.fill_(float(sigma_init))
        layer.agn_sigma.requires_grad_(True)
    set_mode(model, Mode.AGN)
    sigmas = [layers[n].agn_sigma for n in layers]
    share_list = [shares[n] for n in layers]

    def regulariser(_model: torch.nn.Module) -> torch.Tensor:
        return agn_regulariser(sigmas, share_list, lam, sigma_max)

    def sigma_text() -> str:
        return "σ " + " ".join(f"{abs(float(s.detach())):.3f}" for s in sigmas)

    t = prepared.study.train
    if epochs > 0:
        ids = {id(p) for p in sigmas}
        weights = [p for p in model.parameters() if id(p) not in ids]
        fit(
            model,
            prepared.splits.train,
            None,
            epochs=epochs,
            lr=lr,
            batch_size=t.batch_size,
            device=prepared.device,
            seed=seed,
            optimizer="adam",
            schedule="constant",
            extra_loss=regulariser,
            param_groups=[ParamGroup(weights, lr), ParamGroup(sigmas, sigma_lr or SIGMA_LR_FACTOR * lr)],
            reseed_each_epoch=False,
            status=sigma_text,
            desc=f"agn λ={lam:g}",
            lr_setting="[agn] lr",
            resume_path=prepared.run_dir.agn_partial(lam) if resume_key else None,
            resume_key=resume_key,
        )
    model.eval()
    acc = evaluate_accuracy(model, prepared.splits.val, t.eval_batch_size, prepared.device)
    return {n: float(layers[n].agn_sigma.detach().abs()) for n in layers}, float(acc)


def _multipliers(prepared: Prepared, assignment: Mapping[str, str]) -> dict[str, Multiplier]:
    by_name = {m.name: m for m in prepared.space}
    return {n: by_name[m] if m in by_name else prepared.library.get(m) for n, m in assignment.items()}


def get_agn_results(
    prepared: Prepared,
    lambdas: Sequence[float] | None = None,
    *,
    sigma_max: float | None = None,
    sigma_init: float | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    rule: str = DEFAULT_RULE,
    predictor: str = "sampled",
) -> list[AgnResult]:
    """One AgnResult per λ (study's [agn] settings unless given): learned σ_l, tolerance |σ_l|·std(exact
    output of the prepared model's layer), mapped assignment (`rule`, `predictor`), its energy_rel and
    accuracy by behavioural simulation on the validation split. Each λ is cached in agn/lambda_<λ>.json
    (keyed by the QAT checkpoint, the settings and the search space); all together in agn/result.json.
    Both mapping rules are computed; the other one is kept in `alternatives`."""
    cfg = prepared.study.agn
    lambdas = list(cfg.lambdas if lambdas is None else lambdas)
    sigma_max = float(cfg.sigma_max if sigma_max is None else sigma_max)
    sigma_init = float(cfg.sigma_init if sigma_init is None else sigma_init)
    epochs = int(cfg.epochs if epochs is None else epochs)
    lr = float(cfg.lr if lr is None else lr)
    check_agn_settings(lambdas, sigma_max, sigma_init)
    if rule not in RULES:
        raise UserError(f"--rule: expected one of {', '.join(RULES)}, got {rule!r}")

    pred = get_predictions(prepared, predictor)
    run = prepared.run_dir
    qat_sha = sha256_file(run.qat_ckpt) if run.qat_ckpt.is_file() else ""
    space_sha = [m.sha256 for m in prepared.space]
    macs = {info.name: int(info.macs or 0) for info in prepared.layers}
    energies = {m.name: m.energy_rel for m in prepared.space}
    seed = prepared.study.train.seed
    results = []
    for lam in lambdas:
        sigma_key = stage_key("agn", qat_sha, float(lam), sigma_max, sigma_init, epochs, lr, seed)
        map_key = stage_key(sigma_key, space_sha, predictor, rule)
        path = run.agn_lambda_json(lam)
        cached = run.read_stage_json(path, map_key)
        if cached is not None:
            results.append(AgnResult.from_json(cached))
            continue
        trained = _trained_sigmas(path, sigma_key)
        if trained is not None:
            sigma_rel, agn_acc = trained
        else:
            sigma_rel, agn_acc = train_agn(
                prepared, float(lam), sigma_init, sigma_max, epochs, lr, seed, resume_key=sigma_key
            )
        tolerance = {n: sigma_rel[n] * float(pred.output_std[i]) for i, n in enumerate(pred.layers)}
        mapped: dict[str, dict[str, Any]] = {}
        for r in RULES:
            a = map_assignment(pred, tolerance, energies, r)
            mapped[r] = {
                "assignment": a,
                "energy_rel": energy_rel(macs, {n: energies[m] for n, m in a.items()}),
                "accuracy": simulate_accuracy(prepared, _multipliers(prepared, a)),
            }
        main = mapped[rule]
        res = AgnResult(
            lam=float(lam),
            sigma_rel=sigma_rel,
            tolerance=tolerance,
            assignment=main["assignment"],
            energy_rel=float(main["energy_rel"]),
            accuracy=float(main["accuracy"]),
            rule=rule,
            predictor=predictor,
            agn_accuracy=agn_acc,
            alternatives={r: v for r, v in mapped.items() if r != rule},
        )
        run.write_stage_json(path, map_key, {**res.to_json(), "sigma_key": sigma_key})
        results.append(res)
    atomic_write_json(
        run.agn_result_json,
        {
            "study": prepared.study.name,
            "quant_accuracy": prepared.quant_accuracy,
            "results": [r.to_json() for r in results],
        },
    )
    return results


def _trained_sigmas(path: Path, sigma_key: str) -> tuple[dict[str, float], float | None] | None:
    """The σ_l (and AGN accuracy) a λ's file holds when its training inputs (`sigma_key`) are unchanged:
    only the mapping is redone then."""
    import json

    try:
        prev = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(prev, dict) or prev.get("sigma_key") != sigma_key:
        return None
    return prev["sigma_rel"], prev.get("agn_accuracy")
