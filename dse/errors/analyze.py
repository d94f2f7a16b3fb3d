"""`dse analyze`: predicted vs measured error, per layer × multiplier and for the whole network.

Layer level: each layer gets the *exact* network's inputs (quant mode), on validation images, which
are disjoint from the training-split images the profiles (and so every predictor) were built from;
the layer's accumulator through each multiplier's table (the layer's own `int_forward`, i.e. the
kernels) minus the exact accumulator, times the output scale, is the measured error; its std and mean
over every output entry are compared with the predicted σ and mean.
Network level: every homogeneous assignment (one multiplier in every layer) simulated in `lut` mode;
accuracy drop vs the exact quantized model on the same images and the relative distortion of the logits
‖Z̃ − Z‖_F/‖Z‖_F, against the predicted network distortion (root sum of squares of the layers' predicted
relative distortions, `Predictions.network_distortion`).
P1 (dse.errors.analytic.layer_rms_error): the closed-form distortion from each table's error moments under the
layer's profiled byte histograms (no operand sampling), next to the predictors; its Spearman against the
measured layer distortion over the analysed multipliers, per layer and pooled over all layer × multiplier pairs.
Remedies (dse.nn.compensation): each layer × multiplier is also measured with bias compensation and with
weight tuning, both computed from the training split's calibration images (disjoint from the validation
images measured here); `compensation` gives per multiplier the median factor by which they lower the
layer-output distortion.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from dse.errors import estimators as est
from dse.errors.analytic import layer_rms_error
from dse.errors.predict import PREDICTORS, check_formats, get_predictions
from dse.errors.profiles import calibration_images, capture_layer_inputs, float_output, get_profiles
from dse.multipliers.core import Multiplier
from dse.multipliers.library import select
from dse.nn import approx_layers, approximated
from dse.prepare import Prepared
from dse.simulation import ensure_calibration
from dse.train import dataset_tensors
from dse.util import UserError, progress

DEFAULT_PREDICTOR = "sampled"
LAYER_IMAGES = 500


def _median_rel_error(pred: np.ndarray, meas: np.ndarray) -> float | None:
    ok = meas > 0
    if not ok.any():
        return None
    return float(np.median(np.abs(pred[ok] - meas[ok]) / meas[ok]))


def _spearman(x: ArrayLike, y: ArrayLike) -> float | None:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    r = spearmanr(x, y).statistic
    return None if not np.isfinite(r) else float(r)


@dataclass(frozen=True)
class LayerMeasurements:
    """Measured output error per layer × multiplier (arrays [L, M], float output units before bias): std,
    mean and relative distortion ‖ΔY‖_F/‖Y‖_F; `output_std` [L] of the exact layer output; with remedies,
    the same distortion and mean with bias compensation (`*_compensated`) and the distortion with ALWANN
    weight tuning (`distortion_tuned`), both computed from the training split's calibration images."""

    layers: list[str]
    sigma: np.ndarray
    mean: np.ndarray
    distortion: np.ndarray
    output_std: np.ndarray
    distortion_compensated: np.ndarray | None = None
    mean_compensated: np.ndarray | None = None
    distortion_tuned: np.ndarray | None = None


@dataclass(frozen=True)
class NetworkMeasurements:
    """Homogeneous assignments (one multiplier everywhere) simulated on `images` images: accuracy [M] and
    logit distortion ‖Z̃ − Z‖_F/‖Z‖_F [M], next to the exact quantized model's accuracy."""

    quant_accuracy: float
    accuracy: np.ndarray
    logit_distortion: np.ndarray
    images: int


def measure_layers(
    prepared: Prepared, multipliers: Sequence[Multiplier], images: torch.Tensor, remedies: bool = False
) -> LayerMeasurements:
    """Measured error std / mean / relative distortion per layer × multiplier, exact inputs; with
    `remedies` also with bias compensation and with weight tuning (calibrated on the training split)."""
    model = prepared.model
    if remedies:
        ensure_calibration(prepared)
    layers = approx_layers(model)
    inputs = capture_layer_inputs(model, images.to(prepared.device))
    names = list(layers)
    n_l, n_m = len(names), len(multipliers)
    sigma, mean, dist = np.zeros((n_l, n_m)), np.zeros((n_l, n_m)), np.zeros((n_l, n_m))
    out_std = np.zeros(n_l)
    d_comp, m_comp, d_tuned = np.zeros((n_l, n_m)), np.zeros((n_l, n_m)), np.zeros((n_l, n_m))
    bar = progress(total=n_l * n_m, desc="analyze: layers")
    for li, name in enumerate(names):
        layer = layers[name]
        if name not in inputs:
            raise UserError(f"layer {name}: no sample data reached it on the validation images")
        with torch.no_grad():
            codes = layer.input_codes(inputs[name])
            exact = layer.int_forward(codes).to(torch.int64)
            y = float_output(exact, layer.output_scale)
            out_std[li] = float(y.std())
            y_norm = float(torch.linalg.vector_norm(y))
            for mi, m in enumerate(multipliers):
                acc = layer.int_forward(codes, m).to(torch.int64)
                dy = float_output(acc - exact, layer.output_scale)
                sigma[li, mi] = float(dy.std(unbiased=False))
                mean[li, mi] = float(dy.mean())
                dist[li, mi] = float(torch.linalg.vector_norm(dy)) / max(y_norm, 1e-30)
                if remedies:
                    for remedy, d_out in (("bias", d_comp), ("weights", d_tuned)):
                        acc = layer.int_forward(codes, m, remedy=remedy).to(torch.int64)
                        dy = float_output(acc - exact, layer.output_scale)
                        d_out[li, mi] = float(torch.linalg.vector_norm(dy)) / max(y_norm, 1e-30)
                        if remedy == "bias":
                            m_comp[li, mi] = float(dy.mean())
                bar.update(1)
    bar.close()
    if not remedies:
        return LayerMeasurements(names, sigma, mean, dist, out_std)
    return LayerMeasurements(names, sigma, mean, dist, out_std, d_comp, m_comp, d_tuned)


def measure_network(
    prepared: Prepared, multipliers: Sequence[Multiplier], dataset: torch.utils.data.Dataset[Any]
) -> NetworkMeasurements:
    """Homogeneous assignments in `lut` mode: accuracy and logit distortion per multiplier."""
    model = prepared.model
    x, y = dataset_tensors(dataset)
    bs = prepared.study.train.eval_batch_size

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(x[i : i + bs].to(prepared.device)).cpu() for i in range(0, len(x), bs)])

    model.eval()
    z0 = logits()
    acc0 = float((z0.argmax(1) == y).double().mean())
    z0n = float(torch.linalg.vector_norm(z0))
    names = list(approx_layers(model))
    acc, ldist = [], []
    for m in progress(multipliers, desc="analyze: network"):
        with approximated(model, {n: m for n in names}):
            z = logits()
        acc.append(float((z.argmax(1) == y).double().mean()))
        ldist.append(float(torch.linalg.vector_norm(z - z0)) / max(z0n, 1e-30))
    return NetworkMeasurements(acc0, np.array(acc), np.array(ldist), len(y))


def _remedy_entries(meas: LayerMeasurements, li: int, mi: int) -> dict[str, float]:
    if meas.distortion_compensated is None or meas.mean_compensated is None or meas.distortion_tuned is None:
        return {}
    return {
        "measured_distortion_compensated": float(meas.distortion_compensated[li, mi]),
        "measured_mean_compensated": float(meas.mean_compensated[li, mi]),
        "measured_distortion_weight_tuned": float(meas.distortion_tuned[li, mi]),
    }


def _compensation_summary(meas: LayerMeasurements, mults: Sequence[Multiplier]) -> dict[str, Any] | None:
    """Per multiplier, the median over layers of distortion / compensated distortion (how many times the
    compensation lowers the layer-output error), and the same for weight tuning."""
    if meas.distortion_compensated is None or meas.distortion_tuned is None:
        return None

    def ratio(d: np.ndarray, r: np.ndarray) -> list[float | None]:
        out: list[float | None] = []
        for mi in range(d.shape[1]):
            ok = r[:, mi] > 0
            out.append(float(np.median(d[ok, mi] / r[ok, mi])) if ok.any() else None)
        return out

    comp = ratio(meas.distortion, meas.distortion_compensated)
    tuned = ratio(meas.distortion, meas.distortion_tuned)
    return {
        "images": "validation split (the corrections: training-split calibration images)",
        "distortion_ratio_compensated": {m.name: comp[i] for i, m in enumerate(mults) if not m.is_exact},
        "distortion_ratio_weight_tuned": {m.name: tuned[i] for i, m in enumerate(mults) if not m.is_exact},
    }


def analyze(
    prepared: Prepared,
    multipliers: list[str] | None = None,
    predictors: list[str] | None = None,
    default_predictor: str = DEFAULT_PREDICTOR,
    layer_images: int = LAYER_IMAGES,
    network_images: int | None = None,
) -> dict[str, Any]:
    """Everything `dse analyze --json` prints (see the module docstring and docs/ARCHITECTURE.md)."""
    if default_predictor not in PREDICTORS:
        raise UserError(f"--predictor: expected one of {', '.join(PREDICTORS)}, got {default_predictor!r}")
    predictors = list(predictors or PREDICTORS)
    if default_predictor not in predictors:
        predictors.insert(0, default_predictor)
    space = list(prepared.space)
    mults = (
        select(
            space,
            multipliers,
            where="--multipliers",
            nothing="nothing in the search space",
            hint=lambda _: f" ({', '.join(m.name for m in space)})",
        )
        if multipliers
        else space
    )
    check_formats(mults, prepared.fmt)
    preds, pred_seconds = {}, {}
    for p in predictors:
        full = get_predictions(prepared, p)  # cached for the whole space
        cols = [full.multipliers.index(m.name) for m in mults]
        preds[p] = (full, cols)
        pred_seconds[p] = full.seconds

    t0 = time.perf_counter()
    profiles = get_profiles(prepared)  # cached: the predictors above built them
    err = est.error_tables(mults, prepared.fmt.weight_scheme)
    p1 = {
        p.name: layer_rms_error(err, p.hist_x, p.col_hists, p.fan_in, p.col_scale) / max(p.output_rms, 1e-30)
        for p in profiles.layers
    }
    pred_seconds["p1"] = time.perf_counter() - t0

    val = prepared.splits.val
    if len(val) == 0:
        raise UserError(
            "validation split: empty (layers with no sample data); give a dataset with validation images"
        )
    t0 = time.perf_counter()
    images = calibration_images(val, layer_images, seed=1)
    meas = measure_layers(prepared, mults, images, remedies=True)
    layer_seconds = time.perf_counter() - t0

    if network_images is not None and network_images < len(val):
        xv, yv = dataset_tensors(val)
        idx = torch.randperm(len(yv), generator=torch.Generator().manual_seed(2))[:network_images]
        net_set = torch.utils.data.TensorDataset(xv[idx], yv[idx])
    else:
        net_set = val
    t0 = time.perf_counter()
    net = measure_network(prepared, mults, net_set)
    network_seconds = time.perf_counter() - t0

    default, dcols = preds[default_predictor]
    row = {n: i for i, n in enumerate(default.layers)}
    lrows = [row[n] for n in meas.layers]
    by_pred = {}
    for p, (pr, cols) in preds.items():
        by_pred[p] = _median_rel_error(pr.sigma[np.ix_(lrows, cols)], meas.sigma)
    genomes = np.tile(np.array(dcols)[:, None], (1, len(default.layers)))  # [M, L] homogeneous
    pred_net = default.network_distortion(genomes)
    drop = net.quant_accuracy - net.accuracy
    rel = default.relative_distortion[np.ix_(lrows, dcols)]
    aggregates = {
        "rss": pred_net,
        "max": rel.max(axis=0),
        "sum": rel.sum(axis=0),
        "last": rel[-1],
    }
    p1_rho = {name: _spearman(p1[name], meas.distortion[li]) for li, name in enumerate(meas.layers)}
    p1_all = np.concatenate([p1[name] for name in meas.layers])
    dist_by_pred = {
        p: _spearman(
            pr.relative_distortion[np.ix_([pr.layers.index(n) for n in meas.layers], cols)].ravel(),
            meas.distortion.ravel(),
        )
        for p, (pr, cols) in preds.items()
    }
    layers_out = []
    for li, name in enumerate(meas.layers):
        entries = []
        for mi, m in enumerate(mults):
            predicted = {}
            for p, (pr, cols) in preds.items():
                r, c = pr.layers.index(name), cols[mi]
                predicted[p] = {
                    "sigma": pr.sigma[r, c],
                    "mean": pr.mean[r, c],
                    "distortion": pr.relative_distortion[r, c],
                }
            entries.append(
                {
                    "multiplier": m.name,
                    "measured_sigma": meas.sigma[li, mi],
                    "measured_mean": meas.mean[li, mi],
                    "measured_distortion": meas.distortion[li, mi],
                    "predicted": predicted,
                    "p1_distortion": float(p1[name][mi]),
                    **_remedy_entries(meas, li, mi),
                }
            )
        info = next(i for i in prepared.layers if i.name == name)
        layers_out.append(
            {
                "name": name,
                "kind": info.kind,
                "fan_in": info.fan_in,
                "macs": info.macs,
                "output_std": meas.output_std[li],
                "p1_distortion_spearman": p1_rho[name],
                "distortion_spearman": _spearman(
                    default.relative_distortion[default.layers.index(name), dcols], meas.distortion[li]
                ),
                "multipliers": entries,
            }
        )
    network = [
        {
            "multiplier": m.name,
            "energy_rel": m.energy_rel,
            "accuracy": net.accuracy[i],
            "accuracy_drop": drop[i],
            "logit_distortion": net.logit_distortion[i],
            "predicted_distortion": pred_net[i],
        }
        for i, m in enumerate(mults)
    ]
    return {
        "study": prepared.study.name,
        "run_dir": str(prepared.run_dir.path),
        "predictor": default_predictor,
        "sigma_median_rel_error": by_pred[default_predictor],
        "sigma_median_rel_error_by_predictor": by_pred,
        "distortion_accuracy_spearman": _spearman(pred_net, drop),
        "distortion_logit_spearman": _spearman(pred_net, net.logit_distortion),
        # what any predictor of logit distortion can reach: measured logit distortion vs accuracy drop
        "logit_accuracy_spearman": _spearman(net.logit_distortion, drop),
        "homogeneous_with_measurable_drop": int((np.abs(drop) > 2.0 / max(net.images, 1)).sum()),
        # P1 (closed form, no sampling) vs the measured layer distortion; the predictors' for comparison
        "p1_distortion_spearman": {
            "overall": _spearman(p1_all, meas.distortion.ravel()),
            "layers": p1_rho,
        },
        "distortion_spearman_by_predictor": dist_by_pred,
        # measured layer distortion without / with bias compensation (and weight tuning), validation images
        "compensation": _compensation_summary(meas, mults),
        "spearman_by_aggregate": {
            k: {"accuracy": _spearman(v, drop), "logit": _spearman(v, net.logit_distortion)}
            for k, v in aggregates.items()
        },
        "prediction_seconds": pred_seconds,
        "measure_seconds": {"layers": layer_seconds, "network": network_seconds},
        "images": {
            "profiles": "training split (seeded sample)",
            "layers": int(images.shape[0]),
            "network": int(net.images),
            "split": "validation",
        },
        "quant_accuracy": net.quant_accuracy,
        "layers": layers_out,
        "network": network,
    }
