"""Dataset sources, all local (nothing is downloaded): each loader returns the labelled images of a source and,
where the source has one, where its official test split starts (`Source`). The splits are drawn in `dse.data`.

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
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dse.data.batches import load_batch
from dse.util import UserError

BUILTIN_DATASETS = ("digits", "npz", "cifar10", "mnist_idx", "fashion_mnist")
# where Debian's package `dataset-fashion-mnist` installs the idx files: the default of `fashion_mnist`
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = "apt-get install dataset-fashion-mnist"


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
