"""Layer profiles: what the σ predictors need to know about each approximable layer, from a calibration
sample of the training split (never the validation split, which `dse analyze` measures on).

Per layer: global activation / weight code histograms (by byte, value & 0xFF: correct for signed and
unsigned codes alike), per-output-column weight histograms, `rows_per_layer` sampled GEMM rows (im2col
receptive fields for convs, input vectors for linear layers) with their local histograms, the weight
codes, the per-column float output scale, and mean / std of the exact layer output (float, before
bias). Stored in `profiles/profiles.npz` of the run directory, keyed by the QAT checkpoint's sha256.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dse.errors.estimators import byte_histogram, row_histograms
from dse.util import UserError, atomic_write_bytes, log, sha256_file

if TYPE_CHECKING:  # torch is imported where it is used: the profiles' arrays read without it
    import torch

    from dse.nn import ApproxLayer
    from dse.prepare import Prepared

PROFILE_IMAGES = 512
ROWS_PER_LAYER = 512


@dataclass(frozen=True)
class LayerProfile:
    """What the σ predictors know about one layer (codes by byte; float units before bias)."""

    name: str
    kind: str
    fan_in: int
    macs: int
    hist_x: np.ndarray  # [256] activation code counts (all GEMM operand entries incl. padding codes)
    hist_w: np.ndarray  # [256] weight code counts
    col_hists: np.ndarray  # [N, 256] weight code counts per output column
    rows: np.ndarray  # [G, S, K] sampled GEMM rows (codes), one block per group
    weights: np.ndarray  # [G, K, N/G] weight codes per group
    col_scale: np.ndarray  # [N] float output units per accumulator unit, per output column
    output_mean: float  # mean of the exact layer output (float, before bias)
    output_std: float  # std of the same (the AGN tolerance's reference)

    @property
    def local_hists(self) -> np.ndarray:
        """[G·S, 256] normalised histograms of the sampled rows (P3's receptive-field histograms)."""
        return row_histograms(self.rows.reshape(-1, self.rows.shape[-1]))

    @property
    def output_rms(self) -> float:
        return float(np.sqrt(self.output_std**2 + self.output_mean**2))


@dataclass(frozen=True)
class LayerProfiles:
    """Every approximable layer's profile, in the model's layer order; `images`: how many calibration
    images they were taken on; `key`: the QAT checkpoint's sha256 they belong to (the cache key)."""

    layers: list[LayerProfile]
    images: int
    key: str = ""

    def names(self) -> list[str]:
        return [p.name for p in self.layers]

    def __getitem__(self, name: str) -> LayerProfile:
        for p in self.layers:
            if p.name == name:
                return p
        raise KeyError(name)

    def save(self, path: Path) -> None:
        import io

        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"images": self.images, "key": self.key, "layers": []}
        for i, p in enumerate(self.layers):
            meta["layers"].append(
                {
                    "name": p.name,
                    "kind": p.kind,
                    "fan_in": int(p.fan_in),
                    "macs": int(p.macs),
                    "output_mean": float(p.output_mean),
                    "output_std": float(p.output_std),
                }
            )
            for f in ("hist_x", "hist_w", "col_hists", "rows", "weights", "col_scale"):
                arrays[f"{i}_{f}"] = getattr(p, f)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        atomic_write_bytes(path, buf.getvalue())

    @staticmethod
    def load(path: Path) -> LayerProfiles:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            layers = []
            for i, m in enumerate(meta["layers"]):
                arr = {
                    f: z[f"{i}_{f}"]
                    for f in ("hist_x", "hist_w", "col_hists", "rows", "weights", "col_scale")
                }
                layers.append(LayerProfile(**m, **arr))
        return LayerProfiles(layers=layers, images=meta["images"], key=meta["key"])


def _channel_scale(scale: torch.Tensor | np.ndarray, n_cols: int) -> np.ndarray:
    import torch

    s = scale.detach().cpu().double().numpy() if isinstance(scale, torch.Tensor) else np.asarray(scale, float)
    s = s.reshape(-1)
    return np.broadcast_to(s, (n_cols,)).copy() if s.size == 1 else s.astype(np.float64)


def float_output(acc: torch.Tensor, scale: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Accumulator (int32 [B, C, ...]) -> float output before bias, the scale broadcast on channel axis 1."""
    import torch

    acc = acc.to(torch.float64)
    s = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
    if s.numel() > 1:
        s = s.reshape(1, -1, *([1] * (acc.dim() - 2)))
    return acc * s


def capture_layer_inputs(
    model: torch.nn.Module, x: torch.Tensor, layer_names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Run `model` on x and return {layer_name: float input tensor} of every approximable layer."""
    import torch

    from dse.nn import approx_layers

    layers = approx_layers(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in layers.items():
        if layer_names is not None and name not in layer_names:
            continue

        def hook(mod: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _name: str = name) -> None:
            seen[_name] = inputs[0].detach()

        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def calibration_images(dataset: torch.utils.data.TensorDataset, n: int, seed: int = 0) -> torch.Tensor:
    """A seeded sample of `n` inputs of a split: `dse.simulation.calibration_images` (the remedies' images)."""
    from dse.simulation import calibration_images as sample

    return sample(dataset, n, seed)


def layer_operands(
    layer: ApproxLayer, x_float: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """(codes, [(A [M,K], B [K,N]) per group], exact float output before bias) of one layer on its input."""
    import torch

    with torch.no_grad():
        codes = layer.input_codes(x_float)
        ops = layer.gemm_operands(codes)
        acc = layer.int_forward(codes)
    return codes, ops, float_output(acc, layer.output_scale)


def compute_profiles(
    model: torch.nn.Module, images: torch.Tensor, rows_per_layer: int = ROWS_PER_LAYER, seed: int = 0
) -> LayerProfiles:
    """Profile every approximable layer of a prepared (quant-mode, eval) model on `images`."""
    from dse.nn import approx_layers

    model.eval()
    rng = np.random.default_rng(seed)
    inputs = capture_layer_inputs(model, images)
    profiles = []
    for name, layer in approx_layers(model).items():
        if name not in inputs:
            raise UserError(f"layer {name}: no sample data reached it on the calibration images")
        _, ops, y = layer_operands(layer, inputs[name])
        a0 = ops[0][0]
        m_rows = a0.shape[0]
        if m_rows == 0:
            raise UserError(f"layer {name}: no sample data (0 GEMM rows)")
        sel = np.sort(rng.choice(m_rows, size=min(rows_per_layer, m_rows), replace=False))
        rows = np.stack([a.cpu().numpy()[sel] for a, _ in ops]).astype(np.int16)
        weights = np.stack([b.cpu().numpy() for _, b in ops]).astype(np.int16)
        hist_x = sum((byte_histogram(a.cpu().numpy()) for a, _ in ops), np.zeros(256))
        w_all = np.concatenate([b.cpu().numpy() for _, b in ops], axis=1)  # [K, N]
        col_hists = np.stack([byte_histogram(w_all[:, j]) for j in range(w_all.shape[1])])
        yn = y.cpu().numpy()
        assert layer.macs is not None  # set by the forward pass that captured its input
        profiles.append(
            LayerProfile(
                name=name,
                kind=layer.kind,
                fan_in=int(layer.fan_in),
                macs=int(layer.macs),
                hist_x=hist_x,
                hist_w=byte_histogram(w_all),
                col_hists=col_hists,
                rows=rows,
                weights=weights,
                col_scale=_channel_scale(layer.output_scale, w_all.shape[1]),
                output_mean=float(yn.mean()),
                output_std=float(yn.std()),
            )
        )
    return LayerProfiles(layers=profiles, images=int(images.shape[0]))


def _prepared_key(prepared: Prepared) -> str:
    qat = prepared.run_dir.qat_ckpt
    return sha256_file(qat) if qat.exists() else ""


def get_profiles(prepared: Prepared, images: int = PROFILE_IMAGES, recompute: bool = False) -> LayerProfiles:
    """Layer profiles of a prepared run (cached in `profiles/profiles.npz`, recomputed when the QAT
    checkpoint changed). Calibration images: a seeded sample of the *training* split."""
    path = prepared.run_dir.profiles_npz
    key = _prepared_key(prepared)
    if path.exists() and not recompute:
        try:
            cached = LayerProfiles.load(path)
            if cached.key == key and cached.names() == [li.name for li in prepared.layers]:
                return cached
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):  # stale or foreign: recompute
            pass
    log(f"profiling {len(prepared.layers)} layers on {images} training images")
    x = calibration_images(prepared.splits.train, images, seed=0)
    prof = dataclasses.replace(compute_profiles(prepared.model, x), key=key)
    prof.save(path)
    return prof
