"""Test vectors of a multiplier: all 65,536 operand pairs and the table's product, as a `$readmemh` file.

One line per pair, in table order (a = activation byte, the row; b = weight byte, the column):
`AABBPPPPPPPP`, 48 bits in hex: a (8 bits), b (8 bits), the product as a 32-bit two's-complement word (the
table's int32 value). Lines starting with `//` are comments (`$readmemh` skips them).
"""

from __future__ import annotations

import numpy as np

from dse.multipliers.core import Multiplier

N_VECTORS = 65536


def vector_words(m: Multiplier) -> np.ndarray:
    """uint64 [65536]: (a << 40) | (b << 32) | (product & 0xFFFFFFFF), in table order."""
    a = np.repeat(np.arange(256, dtype=np.uint64), 256)
    b = np.tile(np.arange(256, dtype=np.uint64), 256)
    p = m.lut.reshape(-1).astype(np.int64).astype(np.uint64) & np.uint64(0xFFFFFFFF)
    words: np.ndarray = (a << np.uint64(40)) | (b << np.uint64(32)) | p
    return words


def vector_text(m: Multiplier) -> str:
    """The vector file of `m` (see the module docstring)."""
    head = (
        f"// {m.name} ({m.format}): lut sha256 {m.sha256}\n"
        "// one line per operand pair: a[47:40] b[39:32] product[31:0] (int32, two's complement)\n"
    )
    return head + "\n".join(f"{w:012x}" for w in vector_words(m).tolist()) + "\n"
