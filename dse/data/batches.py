"""A restricted unpickler for the CIFAR-10 python batches: they are pickles, and a pickle can name any
callable to run while it loads. `load_batch` admits only what a batch holds — a dict of bytes keys, lists
of ints / bytes and one uint8 numpy array (rebuilt through numpy's own array constructors) — and refuses
every other global before it is looked up, so a crafted batch file runs nothing."""

from __future__ import annotations

import pickle
from typing import IO, Any

# (module, name) pairs a CIFAR-10 batch may reference: numpy's array and dtype reconstruction (protocol 2
# `_reconstruct`; protocol 5 `_frombuffer`; numpy 1 `numpy.core`, numpy 2 `numpy._core`) and the codec
# Python 3 uses for bytes at protocol 2. None of them runs anything but building plain data.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused the global {module}.{name}: a CIFAR-10 batch holds only plain data and numpy "
                "arrays (loading this file could run code)"
            )
        return super().find_class(module, name)


def load_batch(fh: IO[bytes]) -> Any:
    """One CIFAR-10 python batch from an open binary file (Python 2 strings read as bytes)."""
    return _BatchUnpickler(fh, encoding="bytes").load()
