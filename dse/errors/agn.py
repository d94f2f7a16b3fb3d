"""AGN training: learned per-layer noise tolerances (SCIENCE.md §3, P3's gradient search).

Each approximable layer in `agn` mode adds n = z·std(y)·σ_l to its output before the bias, in training
only (dse.nn). Weights and the σ_l are trained together from the QAT checkpoint with

    L = CE − λ·Σ_l (MACs_l / Σ MACs)·min(|σ_l|, σ_max)

so noise is rewarded in proportion to a layer's share of the multiplications, capped at σ_max. The
learned tolerance of layer l is |σ_l|·std(exact layer output); `mapping.map_assignment` turns it into
a multiplier per layer, and the assignment's accuracy is measured by behavioural simulation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from dse.util import UserError


def agn_regulariser(sigmas: Sequence, shares: Sequence[float], lam: float, sigma_max: float):
    """−λ·Σ_l share_l·min(|σ_l|, σ_max), a torch scalar differentiable in the σ_l.

    ∂/∂σ_l = −λ·share_l·sign(σ_l) while |σ_l| < σ_max, 0 above it (T13).
    """
    import torch

    terms = [
        float(s) * torch.clamp(torch.abs(sig), max=float(sigma_max)).sum() for sig, s in zip(sigmas, shares)
    ]
    return -float(lam) * torch.stack(terms).sum()


def check_agn_settings(lambdas: Sequence[float], sigma_max: float, sigma_init: float | None = None) -> None:
    """UserError on λ < 0, σ_max ≤ 0, σ_init < 0 (or non-finite values)."""
    import math

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
    say how the mapping was made; `train_accuracy_agn` is the AGN model's clean accuracy (eval mode)."""

    lam: float
    sigma_rel: dict[str, float]
    tolerance: dict[str, float]
    assignment: dict[str, str]
    energy_rel: float
    accuracy: float
    rule: str = "bias-aware"
    predictor: str = "sampled"
    agn_accuracy: float | None = None
    alternatives: dict | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: Mapping) -> AgnResult:
        return AgnResult(**d)


DEFAULT_RULE = "bias-aware"
# Adam moves a parameter by about lr per step whatever its gradient: the σ_l get a larger step than the
# weights so that a few epochs can move them by O(0.1..1) (P3 trains both with SGD lr 0.1).
SIGMA_LR_FACTOR = 20.0


def _fit_agn(model, train_set, sigmas, regulariser, epochs, lr, sigma_lr, batch_size, device, seed, desc):
    """CE + regulariser; Adam with the σ_l in their own parameter group; progress bar per epoch."""
    import math

    import torch
    import torch.nn.functional as F

    from dse.train import dataset_tensors
    from dse.util import log, progress

    x_all, y_all = dataset_tensors(train_set)
    x_all, y_all = x_all.to(device), y_all.to(device)
    n = len(y_all)
    if n == 0:
        raise UserError(f"{desc}: the training split is empty")
    ids = {id(p) for p in sigmas}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    opt = torch.optim.Adam([{"params": weights, "lr": lr}, {"params": list(sigmas), "lr": sigma_lr}])
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps = math.ceil(n / batch_size)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        total, seen = 0.0, 0
        bar = progress(range(steps), desc=f"{desc} {epoch + 1}/{epochs}", leave=False)
        for step in bar:
            idx = perm[step * batch_size : (step + 1) * batch_size]
            out = model(x_all[idx])
            loss = F.cross_entropy(out, y_all[idx]) + regulariser(model)
            if not torch.isfinite(loss):
                bar.close()
                raise UserError(f"{desc}: the loss became {float(loss)} in epoch {epoch + 1}; lower [agn] lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if step % 10 == 9 or step == steps - 1:
                bar.set_postfix(
                    loss=f"{total / seen:.4f}",
                    sigma=" ".join(f"{abs(float(s.detach())):.3f}" for s in sigmas),
                )
        bar.close()
        log(
            f"{desc} epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}, σ "
            + " ".join(f"{abs(float(s.detach())):.3f}" for s in sigmas)
        )


_FIELDS = set(AgnResult.__dataclass_fields__)


def _lam_tag(lam: float) -> str:
    return f"{lam:g}".replace("-", "m")


def train_agn(
    prepared,
    lam: float,
    sigma_init: float,
    sigma_max: float,
    epochs: int,
    lr: float,
    seed: int = 0,
    sigma_lr: float | None = None,
):
    """Train a copy of the prepared (QAT) model in `agn` mode, weights and σ_l together, with the
    regulariser. Returns ({layer: σ_l}, clean accuracy of the AGN model on the validation split)."""
    import copy

    import torch

    from dse.energy import mac_shares
    from dse.nn import approx_layers, set_mode
    from dse.train import evaluate_accuracy

    model = copy.deepcopy(prepared.model)
    layers = approx_layers(model)
    shares = mac_shares({n: int(layer.macs or 0) or 1 for n, layer in layers.items()})
    for layer in layers.values():
        layer.freeze_ranges = True
        with torch.no_grad():
            layer.agn_sigma.fill_(float(sigma_init))
        layer.agn_sigma.requires_grad_(True)
    set_mode(model, "agn")
    sigmas = [layers[n].agn_sigma for n in layers]
    share_list = [shares[n] for n in layers]

    def regulariser(_model):
        return agn_regulariser(sigmas, share_list, lam, sigma_max)

    t = prepared.study.train
    if epochs > 0:
        _fit_agn(
            model,
            prepared.splits.train,
            sigmas,
            regulariser,
            epochs,
            lr,
            sigma_lr or SIGMA_LR_FACTOR * lr,
            t.batch_size,
            prepared.device,
            seed,
            f"agn λ={lam:g}",
        )
    model.eval()
    acc = evaluate_accuracy(model, prepared.splits.val, t.eval_batch_size, prepared.device)
    return {n: float(layers[n].agn_sigma.detach().abs()) for n in layers}, float(acc)


def assignment_accuracy(prepared, assignment: Mapping[str, str], dataset=None) -> float:
    """Accuracy of an assignment {layer: multiplier name} by behavioural simulation (`lut` mode) on the
    validation split (or `dataset`); the prepared model is restored to exact `quant` afterwards."""
    from dse.nn import assign, set_mode
    from dse.train import evaluate_accuracy

    lib = {m.name: m for m in prepared.space}
    model = prepared.model
    try:
        assign(model, {n: (lib[m] if m in lib else prepared.library.get(m)) for n, m in assignment.items()})
        set_mode(model, "lut")
        return float(
            evaluate_accuracy(
                model,
                prepared.splits.val if dataset is None else dataset,
                prepared.study.train.eval_batch_size,
                prepared.device,
            )
        )
    finally:
        assign(model, {})
        set_mode(model, "quant")


def get_agn_results(
    prepared,
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
    from dse.energy import energy_rel
    from dse.errors.mapping import RULES, map_assignment
    from dse.errors.predict import get_predictions
    from dse.rundir import stage_key
    from dse.util import atomic_write_json, sha256_file

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
    results = []
    for lam in lambdas:
        key = stage_key(
            "agn", qat_sha, float(lam), sigma_max, sigma_init, epochs, lr, prepared.study.train.seed
        )
        map_key = stage_key(key, space_sha, predictor, rule)
        path = run.agn_dir / f"lambda_{_lam_tag(lam)}.json"
        cached = run.read_stage_json(path, map_key)
        if cached is not None:
            results.append(AgnResult.from_json({k: v for k, v in cached.items() if k in _FIELDS}))
            continue
        prev = None
        try:
            import json

            prev = json.loads(path.read_text())
        except Exception:
            prev = None
        if prev is not None and prev.get("sigma_key") == key:
            sigma_rel, agn_acc = prev["sigma_rel"], prev.get("agn_accuracy")
        else:
            sigma_rel, agn_acc = train_agn(
                prepared, float(lam), sigma_init, sigma_max, epochs, lr, prepared.study.train.seed
            )
        tolerance = {n: sigma_rel[n] * float(pred.output_std[i]) for i, n in enumerate(pred.layers)}
        mapped = {}
        for r in RULES:
            a = map_assignment(pred, tolerance, energies, r)
            mapped[r] = {
                "assignment": a,
                "energy_rel": energy_rel(macs, {n: energies[m] for n, m in a.items()}),
                "accuracy": assignment_accuracy(prepared, a),
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
        run.write_stage_json(path, map_key, {**res.to_json(), "sigma_key": key})
        results.append(res)
    atomic_write_json(
        run.agn_dir / "result.json",
        {
            "study": prepared.study.name,
            "quant_accuracy": prepared.quant_accuracy,
            "results": [r.to_json() for r in results],
        },
    )
    return results
