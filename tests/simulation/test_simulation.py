"""`simulate_accuracy`: the accuracy of an assignment by behavioural simulation, on any split, leaving the
prepared model as it found it."""

from __future__ import annotations

import pytest

from dse.data import Split
from dse.nn import Mode, approx_layers
from dse.prepare import load_prepared
from dse.simulation import simulate_accuracy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def prepared(tiny_digits_run):
    return load_prepared(tiny_digits_run, device="cpu")


def test_the_exact_assignment_reproduces_the_quantized_accuracy_on_each_split(prepared):
    assert simulate_accuracy(prepared, {}) == prepared.quant_accuracy
    assert simulate_accuracy(prepared, {}, Split.TEST) == prepared.result.quant_test_accuracy
    assert simulate_accuracy(prepared, {}, "test") == prepared.result.quant_test_accuracy


def test_the_model_is_left_in_quant_mode_with_its_multipliers(prepared):
    lib = {m.name: m for m in prepared.space}
    worst = lib["trunc8_u8"]
    before = {n: (layer.mode, layer.multiplier) for n, layer in approx_layers(prepared.model).items()}
    approx = simulate_accuracy(prepared, {n: worst for n in prepared.layer_names})
    assert 0 <= approx <= 1
    after = {n: (layer.mode, layer.multiplier) for n, layer in approx_layers(prepared.model).items()}
    assert after == before and all(mode == Mode.QUANT for mode, _ in after.values())
    assert simulate_accuracy(prepared, {}) == prepared.quant_accuracy  # nothing of trunc8 stayed behind
