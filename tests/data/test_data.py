"""Dataset loaders on files the tests write, splits, augmentation, and the errors on bad data."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dse.data import crop_flip, load_pool, load_splits, split_indices
from dse.util import UserError


def cfg(
    name: str,
    path: str = "",
    val_size: int = 10,
    test_size: int = 5,
    train_size=None,
    seed: int = 0,
    mean=None,
    std=None,
):
    return SimpleNamespace(
        name=name,
        path=path,
        val_size=val_size,
        test_size=test_size,
        train_size=train_size,
        seed=seed,
        augment=None,
        mean=mean,
        std=std,
    )


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


def test_npz_loader_scales_uint8_and_adds_channel(tmp_path):
    x = np.arange(40 * 28 * 28, dtype=np.int64).reshape(40, 28, 28) % 256
    y = np.arange(40) % 10
    np.savez(tmp_path / "d.npz", x=x.astype(np.uint8), y=y.astype(np.uint8))
    xs, ys = load_pool("npz", tmp_path / "d.npz")
    assert xs.shape == (40, 1, 28, 28) and xs.dtype == np.float32
    assert np.allclose(xs[:, 0] * 255, x)
    assert ys.dtype == np.int64 and (ys == y).all()


def test_npz_missing_key_is_named(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4))
    with pytest.raises(UserError, match=r"no array 'y'.*found: labels, x"):
        load_pool("npz", tmp_path / "d.npz")


def test_missing_path_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="--data"):
        load_pool("npz", "")
    with pytest.raises(UserError, match=r"nope\.npz not found"):
        load_pool("npz", tmp_path / "nope.npz")


def test_mnist_idx_directory_plain_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (4, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte", a)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", b)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(4) + 3)
    x, y = load_pool("mnist_idx", tmp_path)
    assert x.shape == (10, 1, 28, 28)
    assert sorted(y.tolist()) == sorted([0, 1, 2, 3, 4, 5, 3, 4, 5, 6])
    assert np.allclose(np.sort((x * 255).round().ravel()), np.sort(np.concatenate([a.ravel(), b.ravel()])))
    # a study that says `npz` still reads an idx directory given with --data
    x2, _ = load_pool("npz", tmp_path)
    assert x2.shape == x.shape


def test_mnist_idx_without_labels_says_which(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte"):
        load_pool("mnist_idx", tmp_path)


def write_cifar(folder: Path, rng, train_sizes, test_size: int) -> None:
    """CIFAR-10 python batches data_batch_1..5 (of `train_sizes` images) and test_batch, labels 0, 1, …"""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, [*train_sizes, test_size]):
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(range(n))}, f)


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(1)
    write_cifar(tmp_path, rng, [2, 1, 1, 1, 0], 3)
    x, y = load_pool("cifar10", tmp_path)
    assert x.shape == (8, 3, 32, 32) and y.tolist() == [0, 1, 0, 0, 0, 0, 1, 2]
    with open(tmp_path / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    # channel-major rows, as the CIFAR-10 python format stores them
    assert np.allclose(x[0] * 255, first.reshape(3, 32, 32))


def test_cifar10_empty_directory(tmp_path):
    with pytest.raises(UserError, match="no CIFAR-10 python batches"):
        load_pool("cifar10", tmp_path)


def test_module_function_dataset_and_bad_hooks(tmp_path):
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def load(path=None):\n    return np.ones((30, 1, 4, 4), np.float32), np.arange(30) % 3\n"
        "def bad():\n    return 5\n"
    )
    x, y = load_pool("mydata.py:load", base_dir=tmp_path)
    assert x.shape == (30, 1, 4, 4) and y.max() == 2
    with pytest.raises(UserError, match=r"must return \(x, y\)"):
        load_pool("mydata.py:bad", base_dir=tmp_path)
    with pytest.raises(UserError, match="has no function 'nope'"):
        load_pool("mydata.py:nope", base_dir=tmp_path)
    with pytest.raises(UserError, match="cannot import 'no_such_module_xyz'"):
        load_pool("no_such_module_xyz:f")
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_pool("mnist")


def test_splits_disjoint_deterministic_and_seeded():
    a = split_indices(100, None, 20, 10, seed=3)
    b = split_indices(100, None, 20, 10, seed=3)
    c = split_indices(100, None, 20, 10, seed=4)
    assert all((p == q).all() for p, q in zip(a, b))
    assert not (a[1] == c[1]).all()
    train, val, test = a
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    assert len(set(train) | set(val) | set(test)) == 100
    with pytest.raises(UserError, match="too few"):
        split_indices(100, None, 80, 20, seed=0)
    # train_size is an upper bound: a study sized for a large dataset still runs on a small copy
    small_train, small_val, _ = split_indices(100, 50, 20, 10, seed=3)
    assert len(small_train) == 50 and set(small_train) <= set(train) and (small_val == val).all()
    assert len(split_indices(100, 500, 20, 10, seed=3)[0]) == 70


def test_digits_splits_and_recorded_info():
    s = load_splits(cfg("digits", val_size=500, test_size=297))
    assert (len(s.train), len(s.val), len(s.test)) == (1000, 500, 297)
    assert s.num_classes == 10 and s.input_shape == (1, 8, 8)
    x = s.train.tensors[0]
    assert x.min() >= 0 and x.max() <= 1
    again = load_splits(cfg("digits", val_size=500, test_size=297))
    assert again.info == s.info
    assert torch.equal(again.val.tensors[0], s.val.tensors[0])
    assert s.info["sizes"] == {"train": 1000, "val": 500, "test": 297}
    assert s.augment is None


def test_crop_flip_is_a_shifted_or_mirrored_copy():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    out = crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    for i in range(2):  # with no padding, only the flip remains
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == x.shape
    # every non-zero value comes from the same image and channel
    for i in range(2):
        for c in range(3):
            vals = set(out[i, c].flatten().tolist()) - {0.0}
            assert vals <= set(x[i, c].flatten().tolist())
    same = crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    assert torch.equal(out, same)
