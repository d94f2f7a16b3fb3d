"""CIFAR-10 python batches are pickles: they load through a restricted unpickler that admits only a batch's
plain data and numpy arrays, so a crafted batch file is refused and runs nothing."""

from __future__ import annotations

import io
import os
import pickle
import shlex

import numpy as np
import pytest

from dse.data import load_pool
from dse.data.batches import load_batch
from dse.util import UserError


def _batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": list(range(n)),
        b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_real_batch_loads_at_every_protocol(protocol):
    batch = _batch(3)
    got = load_batch(io.BytesIO(pickle.dumps(batch, protocol=protocol)))
    assert got[b"labels"] == [0, 1, 2] and got[b"filenames"][2] == b"img_2.png"
    assert got[b"data"].dtype == np.uint8 and np.array_equal(got[b"data"], batch[b"data"])


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def test_a_crafted_batch_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(_batch(2, i), f, protocol=2)
    evil = {**_batch(2), b"extra": _Payload(marker)}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))  # the payload is real: plain pickle runs it
    assert (tmp_path / "control").exists()
    with pytest.raises(UserError, match=r"data_batch_3 is not a CIFAR-10 python batch .*refused the global "):
        load_pool("cifar10", tmp_path)
    assert not marker.exists()
