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

Sources (`[data] name`):
- `digits`: scikit-learn's bundled 8x8 digits (1,797 images, no path).
- `npz`: a `.npz` file with arrays `x` ([N,H,W], [N,H,W,C] or [N,C,H,W]) and `y` ([N]), optionally
  `x_test` / `y_test` (the official test split).
- `cifar10`: a directory with the CIFAR-10 python batches (`data_batch_1..5`, `test_batch`; all six).
- `mnist_idx`: a directory with MNIST idx files (`*-images-idx3-ubyte` / `*-labels-idx1-ubyte`, `.gz` ok;
  `train-*` and `t10k-*` files are the official splits).
- `fashion_mnist`: Fashion-MNIST idx files; the path defaults to Debian's `dataset-fashion-mnist`
  (`FASHION_MNIST_DIR`, /usr/share/datasets/fashion-mnist).
- `"module:function"`: the user's function; called with the path if one is given, returns `(x, y)`.
The file-based sources follow what the path is: a `.npz` file is read as `npz`, a directory as CIFAR-10
batches (when it holds them) or MNIST idx files, so `--data` may point at either form of a dataset.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dse.data.batches import load_batch
from dse.util import UserError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset

BUILTIN_DATASETS = ("digits", "npz", "cifar10", "mnist_idx", "fashion_mnist")
# where Debian's package `dataset-fashion-mnist` installs the idx files: the default of `fashion_mnist`
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = "apt-get install dataset-fashion-mnist"


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


@dataclass(frozen=True)
class Source:
    """The labelled images of a source: x float32 [N,C,H,W], y int64 [N]. `test_start`: the index where
    the official test split begins (x[:test_start] is the official train split), None for a pool."""

    x: np.ndarray
    y: np.ndarray
    test_start: int | None = None
    kind: str = ""


# ---------------------------------------------------------------------------------------------- loaders


def load_digits_pool() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, read from its CSV directly (importing sklearn.datasets costs seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv = None
    if spec:
        assert spec.submodule_search_locations is not None  # sklearn is a package
        csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if csv is not None and csv.is_file():
        d = np.loadtxt(csv, delimiter=",", dtype=np.float32)
        images, target = d[:, :-1].reshape(-1, 8, 8), d[:, -1]
    else:  # pragma: no cover - a future sklearn layout
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = bunch.images, bunch.target
    return (images.astype(np.float32) / 16.0)[:, None], target.astype(np.int64)


def load_npz(path: Path | str | None) -> Source:
    """Arrays `x`, `y` and, when both are there, the official test split `x_test`, `y_test` (appended)."""
    path = _existing(path, "file")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            for key in ("x", "y"):
                if key not in keys:
                    raise UserError(
                        f"data.path: {path} has no array '{key}' (found: {', '.join(sorted(keys)) or 'none'}); "
                        "expected arrays 'x' (images) and 'y' (labels)"
                    )
            if ("x_test" in keys) != ("y_test" in keys):
                raise UserError(
                    f"data.path: {path} has only one of 'x_test' / 'y_test' (give both or neither)"
                )
            x, y = f["x"], f["y"]
            if "x_test" not in keys:
                return Source(x, y, None, "npz")
            xt, yt = f["x_test"], f["y_test"]
            if xt.shape[1:] != x.shape[1:] or len(xt) != len(yt) or len(y) != len(x):
                raise UserError(
                    f"data.path: {path}: x_test {list(xt.shape)} / y_test {list(yt.shape)} do not match "
                    f"x {list(x.shape)} / y {list(y.shape)}"
                )
            return Source(np.concatenate([x, xt]), np.concatenate([y, yt]), len(x), "npz")
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"data.path: {path} is not a readable .npz file ({type(e).__name__}: {e})") from None


def load_cifar10(path: Path | str | None) -> Source:
    """The five training batches, then `test_batch` (the official test split); all six must be there."""
    path = _existing(path, "directory")
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    found = [path / n for n in names if (path / n).exists()]
    if not found:
        raise UserError(f"data.path: {path} holds no CIFAR-10 python batches (expected {', '.join(names)})")
    missing = [n for n in names if not (path / n).exists()]
    if missing:
        raise UserError(
            f"data.path: {path} lacks the CIFAR-10 batch {', '.join(missing)} (expected {', '.join(names)})"
        )
    xs, ys = [], []
    for f in found:
        try:
            with open(f, "rb") as fh:
                batch = load_batch(fh)  # restricted: a crafted batch runs nothing
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (
            pickle.UnpicklingError,
            OSError,
            EOFError,
            KeyError,
            ValueError,
            TypeError,
            AttributeError,
        ) as e:
            raise UserError(
                f"data.path: {f} is not a CIFAR-10 python batch ({type(e).__name__}: {e})"
            ) from None
    return Source(np.concatenate(xs), np.concatenate(ys), sum(len(v) for v in ys[:-1]), "cifar10")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"data.path: {path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"data.path: {path}: idx header says {dims}, file holds {body.size} values")
    return body.reshape(dims)


def _idx_split(name: str) -> str:
    """'train', 'test' (t10k / test files) or '' for an idx file name."""
    low = name.lower()
    return "test" if ("t10k" in low or "test" in low) else "train" if "train" in low else ""


def load_mnist_idx(path: Path | str | None, kind: str = "mnist_idx") -> Source:
    """Every images/labels pair of the directory; with both `train-*` and `t10k-*` (or `test`) files,
    the train files first and then the official test split."""
    path = _existing(path, "directory", kind)
    xs, ys, splits = [], [], []
    # train files first, then test files (sorted within each), so that test_start is one index
    files = sorted(path.glob("*images*idx3-ubyte*"), key=lambda f: (_idx_split(f.name) == "test", f.name))
    for images in files:
        labels = path / images.name.replace("images", "labels").replace("idx3", "idx1")
        if not labels.exists():
            raise UserError(f"data.path: {images} has no matching labels file {labels.name}")
        x, y = _read_idx(images), _read_idx(labels)
        if len(x) != len(y):
            raise UserError(f"data.path: {images.name} has {len(x)} images but {labels.name} {len(y)} labels")
        xs.append(x)
        ys.append(y)
        splits.append(_idx_split(images.name))
    if not xs:
        raise UserError(f"data.path: {path} holds no MNIST idx files (expected *-images-idx3-ubyte[.gz])")
    test_start = None
    if "test" in splits and "train" in splits and "" not in splits:
        test_start = sum(len(v) for v, s in zip(ys, splits) if s == "train")
    return Source(np.concatenate(xs), np.concatenate(ys), test_start, kind)


def _existing(path: Path | str | None, kind: str, source: str = "") -> Path:
    hint = f"; install it with `{FASHION_MNIST_HINT}`" if source == "fashion_mnist" else ""
    if path is None or str(path) == "":
        raise UserError(f"data.path: this dataset needs a {kind}; give it in the study or with --data PATH")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data.path: {path} not found (expected a {kind}; override with --data PATH){hint}")
    return path


def _normalise(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """-> x float32 [N,C,H,W] in [0,1] for uint8 input (float input kept), y int64 [N]."""
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{what}: expected labels y of shape [{len(x)}], got {list(y.shape)}")
    if len(x) == 0:
        raise UserError(f"{what}: the dataset is empty")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise UserError(f"{what}: expected images x of shape [N,H,W] or [N,C,H,W], got {list(x.shape)}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.number):
        x = x.astype(np.float32)
    else:
        raise UserError(f"{what}: images must be numeric, got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise UserError(f"{what}: labels y must be non-negative integers")
    return np.ascontiguousarray(x), y.astype(np.int64)


def _kind_of(path: Path, name: str) -> str:
    """The file-based source a path holds: a .npz file is `npz`, a directory of CIFAR-10 batches is
    `cifar10`, another directory `mnist_idx`; so `--data` may point at any of them."""
    if path.is_file() and path.suffix == ".npz":
        return "npz"
    if path.is_dir():
        if any(path.glob("*idx3-ubyte*")):
            return "mnist_idx"
        if (path / "data_batch_1").exists() or (path / "cifar-10-batches-py").is_dir():
            return "cifar10"
    return name


def load_pool(
    name: str, path: str | Path | None = None, base_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All labelled images of a dataset source -> (x float32 [N,C,H,W], y int64 [N])."""
    source = load_source(name, path, base_dir)
    return source.x, source.y


def load_source(name: str, path: str | Path | None = None, base_dir: Path | None = None) -> Source:
    """The labelled images of a dataset source, normalised to x float32 [N,C,H,W] and y int64 [N], with
    where its official test split starts (None: the source is one pool)."""
    if name == "fashion_mnist" and path in (None, ""):
        path = FASHION_MNIST_DIR
    fashion = name == "fashion_mnist"
    if name in ("npz", "mnist_idx", "cifar10", "fashion_mnist") and path not in (None, ""):
        name = _kind_of(Path(path).expanduser(), "mnist_idx" if fashion else name)
    test_start: int | None = None
    if name == "digits":
        x, y = load_digits_pool()
    elif name in ("npz", "cifar10", "mnist_idx"):
        if name == "npz":
            src = load_npz(path)
        elif name == "cifar10":
            src = load_cifar10(path)
        else:
            src = load_mnist_idx(path, "fashion_mnist" if fashion else "mnist_idx")
        x, y, test_start = src.x, src.y, src.test_start
        name = "fashion_mnist" if fashion and name == "mnist_idx" else name
    elif ":" in name:
        from dse.models import import_function

        func = import_function(name, "data.name", base_dir)
        try:
            out = func(path) if path else func()
        except UserError:
            raise
        except Exception as e:  # user code: whatever it raises is bad input (one line), never a fallback
            raise UserError(f"data.name: {name} raised {type(e).__name__}: {e}") from None
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise UserError(f"data.name: {name} must return (x, y), got {type(out).__name__}")
        x, y = (np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in out)
    else:
        raise UserError(
            f"data.name: unknown dataset {name!r}; expected one of {', '.join(BUILTIN_DATASETS)} or 'module:function'"
        )
    x, y = _normalise(x, y, f"data ({name})")
    return Source(x, y, test_start, name)


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
