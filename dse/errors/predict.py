"""The [layers × multipliers] table of predicted output-error std and mean (float output units, before
bias), from the layer profiles and the search space's error tables. See `estimators` for the models.

The table is cached in `profiles/predictions.json` as {predictor: {"key": …, **Predictions.to_json()}};
`Predictions.from_json` reads one entry back without torch (the report does).

Predictors: `sampled` (default; the table applied to the sampled calibration rows with the real
weights), `weight-aware` (P3's population model with per-column weight histograms), `p3` (as published:
local activation histograms, one global weight histogram).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dse.errors import estimators as est
from dse.errors.profiles import LayerProfiles, get_profiles
from dse.multipliers.core import Multiplier
from dse.util import UserError, atomic_write_json

if TYPE_CHECKING:  # the prepared run imports torch; this module is read without it
    from dse.prepare import Prepared
    from dse.quant import QuantFormat

PREDICTORS = ("sampled", "weight-aware", "p3")


@dataclass(frozen=True)
class Predictions:
    """Predicted error per layer × multiplier. `sigma[l, m]` / `mean[l, m]`: std / mean of the output
    error of multiplier m at layer l (float units, before bias); `output_std[l]` / `output_rms[l]`: of
    the exact layer output; `energies[m]`: energy_rel; `seconds`: time to build the table."""

    layers: list[str]
    multipliers: list[str]
    sigma: np.ndarray
    mean: np.ndarray
    output_std: np.ndarray
    output_rms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    energies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    macs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    predictor: str = "sampled"
    seconds: float = 0.0

    @property
    def rms(self) -> np.ndarray:
        """√(σ² + mean²): the predicted RMS output error [L, M]."""
        rms: np.ndarray = np.sqrt(self.sigma**2 + self.mean**2)
        return rms

    @property
    def relative_distortion(self) -> np.ndarray:
        """Predicted ‖ΔY‖_F/‖Y‖_F per layer and multiplier [L, M]."""
        rel: np.ndarray = self.rms / np.maximum(self.output_rms, 1e-30)[:, None]
        return rel

    def network_distortion(self, genomes: np.ndarray) -> np.ndarray:
        """Predicted network distortion of assignments genomes [P, L] (multiplier indices): the root sum
        of squares of the layers' relative distortions (independent errors, unit relative gain)."""
        d = self.relative_distortion
        g = np.asarray(genomes)
        net: np.ndarray = np.sqrt((d[np.arange(d.shape[0])[None, :], g] ** 2).sum(axis=1))
        return net

    def to_json(self) -> dict[str, Any]:
        """The cached table's fields (arrays as nested lists when written by `dse.util.atomic_write_json`)."""
        return {
            "predictor": self.predictor,
            "layers": self.layers,
            "multipliers": self.multipliers,
            "sigma": self.sigma,
            "mean": self.mean,
            "output_std": self.output_std,
            "output_rms": self.output_rms,
            "energies": self.energies,
            "macs": self.macs,
            "seconds": self.seconds,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Predictions:
        """One predictor's entry of `profiles/predictions.json` (its "key" is ignored)."""
        arr = {
            k: np.asarray(d[k], dtype=np.float64)
            for k in ("sigma", "mean", "output_std", "output_rms", "energies", "macs")
        }
        return Predictions(
            layers=list(d["layers"]),
            multipliers=list(d["multipliers"]),
            predictor=d["predictor"],
            seconds=d["seconds"],
            **arr,
        )


def check_formats(multipliers: Sequence[Multiplier], fmt: QuantFormat) -> None:
    """UserError when a multiplier's operand format differs from the study's."""
    for m in multipliers:
        if bool(m.signed) != bool(fmt.signed):
            want = "signed" if fmt.signed else "unsigned"
            raise UserError(
                f"multiplier {m.name}: a {m.format} table, but the study's operand format is {want} "
                f"(choose {want} multipliers in the search space)"
            )


def predict_table(
    profiles: LayerProfiles,
    multipliers: Sequence[Multiplier],
    weight_scheme: str,
    predictor: str = "sampled",
) -> Predictions:
    """Build the prediction table for every profiled layer × multiplier (vectorised over the library)."""
    if predictor not in PREDICTORS:
        raise UserError(f"--predictor: expected one of {', '.join(PREDICTORS)}, got {predictor!r}")
    t0 = time.perf_counter()
    err = est.error_tables(multipliers, weight_scheme)
    factors = est.factorize(err) if predictor == "sampled" else None
    n_l, n_m = len(profiles.layers), len(multipliers)
    sigma = np.zeros((n_l, n_m))
    mean = np.zeros((n_l, n_m))
    for li, p in enumerate(profiles.layers):
        if predictor == "sampled":
            errs = [est.sampled_errors(p.rows[g], p.weights[g], err, factors) for g in range(p.rows.shape[0])]
            e = np.concatenate(errs, axis=2).astype(np.float64) * p.col_scale[None, None, :]
            flat = e.reshape(n_m, -1)
            sigma[li], mean[li] = flat.std(axis=1), flat.mean(axis=1)
        elif predictor == "p3":
            sigma[li], mean[li] = est.predict_p3(p.local_hists, p.hist_w, err, p.fan_in, p.col_scale)
        else:
            if p.rows.shape[0] == 1:
                sigma[li], mean[li] = est.predict_weight_aware(
                    p.local_hists, p.col_hists, err, p.fan_in, p.col_scale
                )
            else:  # grouped conv: each group's columns see only that group's rows
                n_g = p.weights.shape[2]
                parts = []
                for g in range(p.rows.shape[0]):
                    cols = slice(g * n_g, (g + 1) * n_g)
                    s, mu = est.predict_weight_aware(
                        est.row_histograms(p.rows[g]), p.col_hists[cols], err, p.fan_in, p.col_scale[cols]
                    )
                    parts.append((s, mu))
                mus = np.stack([mu for _, mu in parts])
                sig2 = np.stack([s**2 + mu**2 for s, mu in parts]).mean(axis=0)
                mean[li] = mus.mean(axis=0)
                sigma[li] = np.sqrt(np.maximum(sig2 - mean[li] ** 2, 0.0))
    return Predictions(
        layers=profiles.names(),
        multipliers=[m.name for m in multipliers],
        sigma=sigma,
        mean=mean,
        output_std=np.array([p.output_std for p in profiles.layers]),
        output_rms=np.array([p.output_rms for p in profiles.layers]),
        energies=np.array([m.energy_rel for m in multipliers]),
        macs=np.array([p.macs for p in profiles.layers], dtype=np.float64),
        predictor=predictor,
        seconds=time.perf_counter() - t0,
    )


def get_predictions(
    prepared: Prepared,
    predictor: str = "sampled",
    multipliers: Sequence[Multiplier] | None = None,
    recompute: bool = False,
) -> Predictions:
    """Predictions for the prepared run's search space (or `multipliers`), cached in
    `profiles/predictions.json` per predictor (recomputed when the profiles or the tables change)."""
    mults = list(prepared.space if multipliers is None else multipliers)
    if not mults:
        raise UserError("search space: no multipliers to predict (empty search space)")
    check_formats(mults, prepared.fmt)
    profiles = get_profiles(prepared)
    path = prepared.run_dir.predictions_json
    key = profiles.key + ":" + ",".join(m.sha256[:16] for m in mults)
    cache: dict[str, Any] = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except json.JSONDecodeError:
            cache = {}
    entry = cache.get(predictor)
    if entry and entry.get("key") == key and not recompute:
        return Predictions.from_json(entry)
    pred = predict_table(profiles, mults, prepared.fmt.weight_scheme, predictor)
    cache[predictor] = {"key": key, **pred.to_json()}
    atomic_write_json(path, cache)
    return pred
