"""Two free remedies for a biased multiplier at one layer: bias compensation and ALWANN-style weight tuning.

Both depend only on the layer's weight codes, the multiplier's table and the layer's **calibration
histograms**: per group g and row k of the unfolded input (conv: one receptive-field position, padding
included, which holds the zero-point code; linear: one input feature), the count of every activation byte
over the calibration images and output positions, `hist[g, k, a]` ([G, K, 256], float64).

- **Bias compensation** (P1's bias term, removed through the bias the accelerator adds anyway): the expected
  accumulator error of output channel n is c_n = Σ_k Σ_a p_k(a)·ε_eff(a, w_kn), ε_eff = T − T_exact on the
  layer's *effective* tables (`dse.quant.effective_lut`: signed, sign-magnitude with the weight's sign
  folded in, affine raw codes; the zero-point terms of the accumulator are exact and cancel). That is one
  [K, 256] × [256, 256] product and a gather per (layer, multiplier), no simulation; it equals the
  brute-force mean of (acc_lut − acc_exact) per channel on the calibration images. The layer subtracts the
  integer `round(c_n)` from its accumulator: in hardware the integer bias becomes bias_int − round(c_n),
  and the float bias bias − round(c_n)·output_scale_n (`compensated_float_bias`).
- **Weight tuning** (ALWANN, Mrazek et al. 2019): each weight code w is replaced by the code
  w' = argmin_{w'} Σ_a p(a)·|a·w − L(a, w')| (p: the layer's activation histogram, all rows together; L the
  multiplier's own table, in its operand values). Realised as a modified table L'(a, w) = L(a, map[w]) (a
  raw table of the format), so every kernel runs it unchanged; `map` is what a hardware flow applies to the
  stored weights. For sign-magnitude the map acts on magnitudes (0..127), for signed symmetric weights on
  codes −127..127, for affine on 0..255.

Assignment names carry the remedy as a suffix (`VARIANT_SUFFIX`): "trunc4_u8+bc" is trunc4_u8 with bias
compensation, "trunc4_u8+wt" with tuned weights; `split_variant` / `variant_name` convert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from dse.multipliers.core import Multiplier, operand_values
from dse.quant import MultiplierOrTable, QuantFormat, effective_lut, exact_lut, raw_table


class RemedyLayer(Protocol):
    """What the remedies need of an `ApproxLayer` (dse.nn.layer; a Protocol keeps this module below it)."""

    bias: torch.Tensor | None

    @property
    def output_scale(self) -> torch.Tensor: ...

    def input_codes(self, x: torch.Tensor) -> torch.Tensor: ...

    def gemm_operands(self, in_codes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]: ...

    def bias_correction(self, multiplier: MultiplierOrTable) -> torch.Tensor: ...

    def weight_map(self, multiplier: MultiplierOrTable) -> np.ndarray: ...


BIAS = "bias"
WEIGHTS = "weights"
REMEDIES = (BIAS, WEIGHTS)
VARIANT_SUFFIX = {BIAS: "+bc", WEIGHTS: "+wt"}
# what produces the calibration histograms (named in the error when a layer has none)
CALIBRATION_HINT = (
    "its calibration histograms come from the run's training split (`dse prepare RUN` makes the run; "
    "dse.simulation.ensure_calibration(prepared) computes them)"
)


def split_variant(name: str) -> tuple[str, str | None]:
    """'trunc4_u8+bc' -> ('trunc4_u8', 'bias'); 'trunc4_u8+wt' -> (…, 'weights'); a plain name -> (name, None)."""
    for remedy, suffix in VARIANT_SUFFIX.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], remedy
    return name, None


def variant_name(base: str, remedy: str | None) -> str:
    """The assignment name of `base` with `remedy` (None: the plain name)."""
    if remedy is None:
        return base
    if remedy not in VARIANT_SUFFIX:
        raise ValueError(f"remedy: expected one of {', '.join(REMEDIES)} or None, got {remedy!r}")
    return base + VARIANT_SUFFIX[remedy]


def remedies_of(assignment: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """({layer: base multiplier name}, {layer: remedy} for the layers whose name carries one)."""
    names: dict[str, str] = {}
    remedies: dict[str, str] = {}
    for layer, name in assignment.items():
        base, remedy = split_variant(name)
        names[layer] = base
        if remedy is not None:
            remedies[layer] = remedy
    return names, remedies


def with_remedies(choices: Sequence[str], exact: set[str], compensate: bool | str, tuning: bool) -> list[str]:
    """A layer's search choices under the space's options: `compensate` True replaces every approximate
    multiplier by its compensated variant, "search" offers both (the search decides per layer: the boolean
    gene folded into the layer's categorical gene), `tuning` adds the weight-tuned variant."""
    out: list[str] = []
    for name in choices:
        if name in exact:
            out.append(name)
            continue
        if compensate is not True:
            out.append(name)
        if compensate is True or compensate == "search":
            out.append(variant_name(name, BIAS))
        if tuning:
            out.append(variant_name(name, WEIGHTS))
    return out


class ChoiceSpace(Protocol):
    """A search problem's layers and their allowed names (dse.search.problem.SearchProblem)."""

    @property
    def layers(self) -> tuple[str, ...]: ...

    @property
    def choices(self) -> tuple[tuple[str, ...], ...]: ...


def in_choices(assignment: Mapping[str, str], problem: ChoiceSpace) -> dict[str, str]:
    """An assignment of plain names (an AGN mapping) in a space whose choices may be variants only
    (compensate_bias = true): a name a layer does not offer becomes its compensated variant if offered."""
    allowed = dict(zip(problem.layers, problem.choices))
    out = {}
    for layer, name in assignment.items():
        comp = variant_name(name, BIAS)
        out[layer] = comp if name not in allowed.get(layer, ()) and comp in allowed.get(layer, ()) else name
    return out


# ------------------------------------------------------------------------------------------ histograms


def row_histograms(a: torch.Tensor) -> torch.Tensor:
    """Byte counts per column of GEMM operand rows: a [M, K] codes -> [K, 256] float64."""
    k = a.shape[1]
    idx = (a.to(torch.int64) & 0xFF) + 256 * torch.arange(k, device=a.device)
    return torch.bincount(idx.reshape(-1), minlength=256 * k).reshape(k, 256).to(torch.float64)


def layer_histograms(layer: RemedyLayer, x_float: torch.Tensor) -> torch.Tensor:
    """[G, K, 256] activation byte counts of the layer's unfolded input rows on a float input batch."""
    with torch.no_grad():
        ops = layer.gemm_operands(layer.input_codes(x_float))
    return torch.stack([row_histograms(a).cpu() for a, _ in ops])


# ------------------------------------------------------------------------------------------ bias compensation


def error_table(multiplier: MultiplierOrTable, fmt: QuantFormat) -> torch.Tensor:
    """ε_eff[a, w] = T[a, w] − T_exact[a, w] on the effective tables (int64 [256, 256])."""
    return effective_lut(multiplier, fmt).to(torch.int64) - exact_lut(fmt).to(torch.int64)


def expected_acc_error(
    hist: torch.Tensor, weight_bytes: torch.Tensor, err: torch.Tensor, groups: int = 1
) -> torch.Tensor:
    """c_n = Σ_k Σ_a p_k(a)·ε(a, w_kn), float64 [N]: `hist` [G, K, 256] counts (normalised per row here),
    `weight_bytes` [N, K] (byte codes of output channel n's K weights; channels of group g are the g-th
    block), `err` [256, 256] effective error table."""
    g, k, _ = hist.shape
    if g != groups or weight_bytes.shape[1] != k:
        raise ValueError(f"histograms {list(hist.shape)} do not fit weights {list(weight_bytes.shape)}")
    p = hist / hist.sum(dim=2, keepdim=True).clamp_min(1.0)
    errd = err.to(torch.float64)
    n_per = weight_bytes.shape[0] // groups
    out = []
    for gi in range(groups):
        m = p[gi] @ errd  # [K, 256]: expected error of row k for each weight byte
        w = weight_bytes[gi * n_per : (gi + 1) * n_per].t().to(torch.int64)  # [K, n_per]
        out.append(torch.gather(m, 1, w).sum(dim=0))
    return torch.cat(out)


def compensated_float_bias(
    bias: torch.Tensor | None, correction: torch.Tensor, output_scale: torch.Tensor
) -> torch.Tensor:
    """The float bias a compensated layer carries: bias − correction·output_scale (float64 [C_out])."""
    b = (
        torch.zeros(correction.shape[0], dtype=torch.float64)
        if bias is None
        else bias.detach().cpu().double()
    )
    return b - correction.cpu().double() * output_scale.detach().cpu().double()


# ------------------------------------------------------------------------------------------ weight tuning


def weight_candidates(fmt: QuantFormat) -> np.ndarray:
    """The weight bytes a tuned weight may take in the multiplier's own table (see the module docstring)."""
    if fmt.weight_scheme == "affine":
        return np.arange(256)
    if fmt.weight_scheme == "sign-magnitude":
        return np.arange(128)
    return np.arange(-127, 128) & 0xFF


def weight_map(multiplier: MultiplierOrTable, act_hist: np.ndarray, fmt: QuantFormat) -> np.ndarray:
    """map[w] = argmin_{w'} Σ_a p(a)·|a·w − L(a, w')| over the allowed bytes (`weight_candidates`; ties
    keep w, else the first candidate), int64 [256] over the weight bytes of the multiplier's table; bytes no
    weight can take map to themselves; `act_hist` [256] activation byte counts."""
    lut, _, _ = raw_table(multiplier)
    vals = operand_values(fmt.signed).astype(np.float64)
    p = np.asarray(act_hist, dtype=np.float64)
    p = p / max(p.sum(), 1.0)
    used = p > 0
    a = vals[used]
    pw = p[used]
    table = lut[used].astype(np.float64)  # [A, 256]
    cand = weight_candidates(fmt)
    out = np.arange(256, dtype=np.int64)
    for w in cand:
        exact = a * vals[w]  # [A]
        cost = (pw[:, None] * np.abs(exact[:, None] - table[:, cand])).sum(axis=0)  # [C]
        i = int(np.argmin(cost))
        if cost[i] < cost[int(np.nonzero(cand == w)[0][0])]:  # ties keep w
            out[w] = int(cand[i])
    return out


def remedy_json(layer: RemedyLayer, multiplier: Multiplier, remedy: str | None) -> dict[str, Any] | None:
    """What the configuration JSON carries for a layer's remedy (None: no remedy): bias compensation: the
    per-channel correction in accumulator units (subtracted) and the resulting float bias; weight tuning:
    the weight-byte map of the multiplier's table."""
    if remedy is None or multiplier.is_exact:
        return None
    if remedy == BIAS:
        corr = layer.bias_correction(multiplier)
        return {
            "remedy": BIAS,
            "acc_correction": [int(v) for v in corr.tolist()],
            "float_bias": [float(v) for v in compensated_float_bias(layer.bias, corr, layer.output_scale)],
        }
    return {"remedy": WEIGHTS, "weight_map": [int(v) for v in layer.weight_map(multiplier).tolist()]}
