"""Datasets, all local (nothing is downloaded), and their fixed, seeded, disjoint splits.

A loader returns the labelled images of a source (`Source`) and, where the source has one, where its
official test split starts. `load_splits` then draws the splits:
- **official split** (CIFAR-10 batches, MNIST / Fashion-MNIST idx files with both train and t10k files, an
  `.npz` with `x_test` / `y_test`): validation and test are drawn, by one seeded permutation, from the
  official *test* split, and training from the official *train* split only, so that a network trained on
  the train split never sees a validation image it was trained on;
- **pool** (digits, an `.npz` without a test split, a user function, idx files of one split): the pool is
  re-split by one seeded permutation (validation, test, then train from the rest).
splits.json records which (`"split": "official" | "pool"`).
Images become float32 in [0, 1] (uint8 / 255; digits / 16), shape [N, C, H, W], labels int64. With
`[data] mean` / `std` (one value per channel) the images are normalised, (x - mean) / std, before the model
sees them; without, inputs stay non-negative so that unsigned activation formats carry them (with, the
first layer's negative inputs take the format's rule: a shifted zero point for unsigned).

The sources and their loaders are in `dse.data.sources`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dse.data.sources import (
    BUILTIN_DATASETS,
    FASHION_MNIST_DIR,
    FASHION_MNIST_HINT,
    Source,
    load_cifar10,
    load_digits_pool,
    load_mnist_idx,
    load_npz,
    load_pool,
    load_source,
)
from dse.util import UserError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset


__all__ = [
    "AUGMENTATIONS",
    "BUILTIN_DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_HINT",
    "DataSpec",
    "Source",
    "Split",
    "Splits",
    "crop_flip",
    "load_cifar10",
    "load_digits_pool",
    "load_mnist_idx",
    "load_npz",
    "load_pool",
    "load_source",
    "load_splits",
    "normalisation",
    "official_split_indices",
    "random_shift",
    "split_indices",
]


class Split(str, Enum):
    """The three disjoint splits. A str: `Split.VAL == "val"`, and the plain strings work wherever a
    Split is expected (`Split("val")`)."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"

    def __str__(self) -> str:
        return self.value


@dataclass
class Splits:
    """train / val / test as TensorDatasets (x float32 [N,C,H,W], y int64), plus what describes them.
    `augment(x, generator) -> x` is applied by training to train batches only (None: no augmentation).
    `splits[Split.VAL]` (or `splits["val"]`) is `splits.val`."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # seed, sizes, index sha256, data sha256 (splits.json)

    def __getitem__(self, split: Split | str) -> TensorDataset:
        return {Split.TRAIN: self.train, Split.VAL: self.val, Split.TEST: self.test}[Split(split)]


class DataSpec(Protocol):
    """What `load_splits` reads of a study's [data] section (`dse.study.DataConfig`, which sits above
    this module)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def train_size(self) -> int | None: ...
    @property
    def val_size(self) -> int: ...
    @property
    def test_size(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def augment(self) -> str | None: ...
    @property
    def mean(self) -> list[float] | None: ...
    @property
    def std(self) -> list[float] | None: ...


# ------------------------------------------------------------------------------------------------ splits


def split_indices(
    n: int, train_size: int | None, val_size: int, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint index arrays (train, val, test) over range(n). val and test get exactly their
    sizes; train gets at most `train_size` of the rest (all of it when None), so one study can bound
    its training budget on a large copy of a dataset and still run on a small one."""
    if val_size < 1 or test_size < 0:
        raise UserError(f"data: val_size must be >= 1 and test_size >= 0 (got {val_size}, {test_size})")
    rest = n - val_size - test_size
    if rest < 1:
        raise UserError(
            f"data: the dataset has {n} images, too few for val_size={val_size} + test_size={test_size} "
            "+ at least one training image"
        )
    train_size = rest if train_size is None else min(train_size, rest)
    perm = np.random.default_rng(seed).permutation(n)
    val = np.sort(perm[:val_size])
    test = np.sort(perm[val_size : val_size + test_size])
    train = np.sort(perm[val_size + test_size : val_size + test_size + train_size])
    return train, val, test


def official_split_indices(
    n: int, test_start: int, train_size: int | None, val_size: int, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val, test) over range(n) for a source whose official test split is
    [test_start, n): val and test are drawn from the official test split (one permutation of it: val
    first, then test), train from the official train split [0, test_start) (at most `train_size`)."""
    if val_size < 1 or test_size < 0:
        raise UserError(f"data: val_size must be >= 1 and test_size >= 0 (got {val_size}, {test_size})")
    n_test = n - test_start
    if val_size + test_size > n_test:
        raise UserError(
            f"data: the official test split has {n_test} images, too few for val_size={val_size} + "
            f"test_size={test_size} (validation and test are drawn from it)"
        )
    if test_start < 1:
        raise UserError("data: the official train split is empty")
    rng = np.random.default_rng(seed)
    perm_test = test_start + rng.permutation(n_test)
    val = np.sort(perm_test[:val_size])
    test = np.sort(perm_test[val_size : val_size + test_size])
    train_size = test_start if train_size is None else min(train_size, test_start)
    train = np.sort(rng.permutation(test_start)[:train_size])
    return train, val, test


def normalisation(
    mean: list[float] | None, std: list[float] | None, channels: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """[data] mean / std as float32 [1, C, 1, 1] arrays (None when neither is given); UserError when only
    one is given, a length is not the channel count, or a std is <= 0."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise UserError("data: give both mean and std (one value per channel), or neither")
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise UserError(
                f"data.{key}: expected {channels} value(s), one per image channel, got {len(values)}"
            )
    if min(std) <= 0:
        raise UserError(f"data.std: every value must be > 0, got {list(std)}")
    shape = (1, channels, 1, 1)
    return np.asarray(mean, np.float32).reshape(shape), np.asarray(std, np.float32).reshape(shape)


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def load_splits(
    data_cfg: DataSpec, path_override: str | Path | None = None, base_dir: Path | None = None
) -> Splits:
    """The seeded train / val / test splits of the pool `data_cfg` names (`path_override` replaces its
    path)."""
    import torch
    from torch.utils.data import TensorDataset

    path = path_override if path_override not in (None, "") else data_cfg.path
    source = load_source(data_cfg.name, path, base_dir)
    x, y = source.x, source.y
    norm = normalisation(data_cfg.mean, data_cfg.std, x.shape[1])
    if source.test_start is not None:
        train, val, test = official_split_indices(
            len(x),
            source.test_start,
            data_cfg.train_size,
            data_cfg.val_size,
            data_cfg.test_size,
            data_cfg.seed,
        )
    else:
        train, val, test = split_indices(
            len(x), data_cfg.train_size, data_cfg.val_size, data_cfg.test_size, data_cfg.seed
        )
    data_sha = hashlib.sha256(_sha(x).encode() + _sha(y).encode()).hexdigest()
    if norm is not None:
        x = (x - norm[0]) / norm[1]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    num_classes = int(y.max()) + 1
    augment = data_cfg.augment
    if augment is None:  # default: the standard augmentation where it is standard
        augment = "crop_flip" if data_cfg.name == "cifar10" else "none"
    info: dict[str, Any] = {
        "seed": data_cfg.seed,
        "pool_size": len(x),
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "index_sha256": {"train": _sha(train), "val": _sha(val), "test": _sha(test)},
        "data_sha256": data_sha,
        "num_classes": num_classes,
        "input_shape": list(x.shape[1:]),
        "split": "official" if source.test_start is not None else "pool",
    }
    if source.test_start is not None:
        info["official_sizes"] = {"train": int(source.test_start), "test": int(len(x) - source.test_start)}
    if norm is not None:
        info["mean"], info["std"] = list(data_cfg.mean or []), list(data_cfg.std or [])
    return Splits(
        train=TensorDataset(xt[train], yt[train]),
        val=TensorDataset(xt[val], yt[val]),
        test=TensorDataset(xt[test], yt[test]),
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        augment=_in_image_space(AUGMENTATIONS[augment], norm),
        info=info,
    )


Augment = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]


def _in_image_space(augment: Augment | None, norm: tuple[np.ndarray, np.ndarray] | None) -> Augment | None:
    """`augment` applied to the [0, 1] images of normalised batches (so a crop pads with black, as it
    does before normalisation), the result normalised again."""
    if augment is None or norm is None:
        return augment
    import torch

    mean, std = (torch.from_numpy(a) for a in norm)
    base = augment

    def in_image_space(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        m, s = mean.to(x.device), std.to(x.device)
        return (base(x * s + m, generator) - m) / s

    return in_image_space


def crop_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, padding: int | None = None, flip: bool = True
) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch [N,C,H,W]: random crop with zero padding (default H/8:
    4 pixels for 32x32) + horizontal flip (when `flip`)."""
    import torch
    from torch.nn import functional as F

    n, _, h, w = x.shape
    padding = max(1, h // 8) if padding is None else padding
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    mirror = (torch.rand(n, generator=generator) < 0.5) & flip
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # [N, H]
    cols = dx[:, None] + torch.arange(w)[None]  # [N, W]
    cols = torch.where(mirror[:, None], cols.flip(1), cols).to(x.device)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_shift(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation by up to H/8 pixels (zero fill), no flip: for digits, where a mirror image is
    another symbol."""
    return crop_flip(x, generator, flip=False)


# [data] augment -> the function training applies to train batches
AUGMENTATIONS = {"none": None, "shift": random_shift, "crop_flip": crop_flip}
