"""Official train/test splits (idx, CIFAR-10, npz with x_test), input normalisation, Fashion-MNIST's
default path, and their bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data import cfg, write_cifar, write_idx

import dse.data as data
from dse.data import load_source, load_splits
from dse.util import UserError


def _ids(split) -> set[int]:
    """Each image's id: the test writes its label as a unique number per image."""
    return set(split.tensors[1].tolist())


def _idx_dir(folder, n_train: int = 40, n_test: int = 30):
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 8, 8)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train))  # ids 0..n_train-1
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 8, 8)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", 100 + np.arange(n_test))  # ids 100..
    return folder


def test_idx_official_split_draws_val_and_test_from_t10k(tmp_path):
    _idx_dir(tmp_path)
    s = load_splits(cfg("mnist_idx", str(tmp_path), val_size=12, test_size=10))
    assert all(i >= 100 for i in _ids(s.val) | _ids(s.test))  # only official test images
    assert all(i < 100 for i in _ids(s.train)) and len(s.train) == 40  # the whole official train split
    assert not (_ids(s.val) & _ids(s.test))
    assert s.info["split"] == "official"
    assert s.info["official_sizes"] == {"train": 40, "test": 30}
    # train_size caps the official train split; seeded and reproducible
    capped = load_splits(cfg("mnist_idx", str(tmp_path), val_size=12, test_size=10, train_size=15))
    assert len(capped.train) == 15 and _ids(capped.train) < set(range(40))
    again = load_splits(cfg("mnist_idx", str(tmp_path), val_size=12, test_size=10, train_size=15))
    assert _ids(again.train) == _ids(capped.train) and _ids(again.val) == _ids(capped.val)


def test_official_test_split_too_small_says_so(tmp_path):
    _idx_dir(tmp_path, n_test=8)
    with pytest.raises(UserError, match=r"official test split has 8 images.*val_size=5.*test_size=5"):
        load_splits(cfg("mnist_idx", str(tmp_path), val_size=5, test_size=5))


def test_idx_files_of_one_split_are_a_pool(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((30, 8, 8)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(30))
    assert load_source("mnist_idx", tmp_path).test_start is None
    s = load_splits(cfg("mnist_idx", str(tmp_path), val_size=5, test_size=5))
    assert s.info["split"] == "pool" and len(s.train) == 20


def test_cifar10_official_split_is_test_batch(tmp_path):
    # labels: 0..n-1 within each batch, so tell train from test images by their first pixel instead
    rng = np.random.default_rng(2)
    write_cifar(tmp_path, rng, [4, 4, 4, 4, 4], 12)
    src = load_source("cifar10", tmp_path)
    assert src.test_start == 20 and len(src.x) == 32
    s = load_splits(cfg("cifar10", str(tmp_path), val_size=6, test_size=6))
    test_images = torch.from_numpy(src.x[20:])
    for part in (s.val, s.test):
        for img in part.tensors[0]:
            assert (test_images == img).flatten(1).all(1).any()
    assert len(s.train) == 20 and s.info["split"] == "official"


def test_cifar10_missing_batch_is_one_line(tmp_path):
    rng = np.random.default_rng(3)
    write_cifar(tmp_path, rng, [2, 2, 2, 2, 2], 3)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"lacks the CIFAR-10 batch data_batch_3") as e:
        load_source("cifar10", tmp_path)
    assert "\n" not in str(e.value)


def test_npz_with_x_test_is_an_official_split_and_without_a_pool(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (50, 8, 8)).astype(np.uint8)
    xt = rng.integers(0, 256, (20, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "split.npz", x=x, y=np.arange(50), x_test=xt, y_test=100 + np.arange(20))
    s = load_splits(cfg("npz", str(tmp_path / "split.npz"), val_size=10, test_size=10))
    assert _ids(s.val) | _ids(s.test) == set(range(100, 120)) and _ids(s.train) == set(range(50))
    assert s.info["split"] == "official"
    # the same file without x_test: the pool is re-split, exactly as before (indices of split_indices)
    np.savez(tmp_path / "pool.npz", x=x, y=np.arange(50))
    pool = load_splits(cfg("npz", str(tmp_path / "pool.npz"), val_size=10, test_size=10))
    train, val, test = data.split_indices(50, None, 10, 10, 0)
    assert pool.info["split"] == "pool" and _ids(pool.val) == set(val.tolist())
    assert _ids(pool.test) == set(test.tolist()) and _ids(pool.train) == set(train.tolist())
    np.savez(tmp_path / "half.npz", x=x, y=np.arange(50), x_test=xt)
    with pytest.raises(UserError, match="only one of 'x_test' / 'y_test'"):
        load_source("npz", tmp_path / "half.npz")


def test_digits_splits_unchanged_by_official_split_logic():
    s = load_splits(cfg("digits", val_size=500, test_size=297))
    train, val, test = data.split_indices(1797, None, 500, 297, 0)
    assert s.info["split"] == "pool" and s.info["index_sha256"]["val"] == data._sha(val)
    assert s.info["index_sha256"]["train"] == data._sha(train)


def test_mean_std_normalise_the_images(tmp_path):
    _idx_dir(tmp_path)
    plain = load_splits(cfg("mnist_idx", str(tmp_path), val_size=12, test_size=10))
    norm = load_splits(cfg("mnist_idx", str(tmp_path), val_size=12, test_size=10, mean=[0.25], std=[0.5]))
    assert torch.allclose(norm.val.tensors[0], (plain.val.tensors[0] - 0.25) / 0.5)
    assert norm.info["mean"] == [0.25] and norm.info["std"] == [0.5]
    assert norm.info["index_sha256"] == plain.info["index_sha256"]


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        ([0.1, 0.2], [0.3, 0.3], r"data\.mean: expected 1 value"),
        ([0.1], [0.3, 0.3], r"data\.std: expected 1 value"),
        ([0.1], [0.0], r"data\.std: every value must be > 0"),
        ([0.1], None, "give both mean and std"),
    ],
)
def test_bad_mean_std(tmp_path, mean, std, message):
    _idx_dir(tmp_path)
    with pytest.raises(UserError, match=message):
        load_splits(cfg("mnist_idx", str(tmp_path), val_size=12, test_size=10, mean=mean, std=std))


def test_fashion_mnist_defaults_to_the_debian_path_and_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data.sources, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(UserError, match=r"apt-get install dataset-fashion-mnist") as e:
        load_source("fashion_mnist")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(data.sources, "FASHION_MNIST_DIR", _idx_dir(tmp_path))
    src = load_source("fashion_mnist")
    assert src.kind == "fashion_mnist" and src.test_start == 40


@pytest.mark.skipif(
    not data.FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed"
)
def test_debian_fashion_mnist_package_is_the_official_split():
    s = load_splits(cfg("fashion_mnist", val_size=200, test_size=100, train_size=300))
    assert s.info["official_sizes"] == {"train": 60000, "test": 10000}
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and len(s.train) == 300


def test_augmentation_of_normalised_images_pads_with_black():
    from dse.data import _in_image_space, crop_flip, normalisation

    aug = _in_image_space(crop_flip, normalisation([0.25], [0.5], 1))
    white = torch.full((64, 1, 16, 16), (1.0 - 0.25) / 0.5)  # normalised white images
    got = aug(white, torch.Generator().manual_seed(0))
    values = set(got.unique().tolist())
    # padded pixels are black before normalisation, (0 - 0.25) / 0.5 after; never the normalised 0
    assert values == {1.5, -0.5}
