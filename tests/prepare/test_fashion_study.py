"""The built-in fashion_resnet20 study on a small slice of Debian's real Fashion-MNIST (dataset-fashion-mnist,
which .ci/run installs): official split, ResNet-20 with 19 convolutions + 1 linear layer, prepared end to end."""

from __future__ import annotations

import pytest

from dse.data import FASHION_MNIST_DIR
from dse.prepare import prepare
from dse.study import load_study

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist"),
]


def test_fashion_resnet20_prepares_on_a_slice_of_the_debian_package(tmp_path):
    study = load_study("fashion_resnet20")
    assert study.data.name == "fashion_mnist" and study.data.path == ""  # the Debian path by default
    small = study.model_copy(
        update={
            "data": study.data.model_copy(update={"train_size": 96, "val_size": 48, "test_size": 32}),
            "train": study.train.model_copy(update={"epochs": 1, "qat_epochs": 0, "calibration_batches": 1}),
        }
    )
    result = prepare(small, out=tmp_path / "run", device="cpu")
    assert result.split == "official" and result.splits == {"train": 96, "val": 48, "test": 32}
    kinds = [layer.kind for layer in result.layers]
    assert kinds == ["conv"] * 19 + ["linear"]
    assert result.layers[0].weight_shape == (16, 1, 3, 3)  # one input channel, 28x28 images
    assert result.float_batchnorm == () and len(result.folded_batchnorm) == 19
    assert result.lut_exact_accuracy == result.quant_accuracy
    assert result.lut_exact_test_accuracy == result.quant_test_accuracy
