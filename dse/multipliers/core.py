"""The `Multiplier`: an 8-bit approximate multiplier as a 256x256 table plus an energy figure.

Conventions (docs/REFERENCES.md, Conventions): `lut[a_byte, w_byte]` is the approximate product of the
activation operand (first index) and the weight operand (second index); signed tables are indexed by the
two's-complement byte (value & 0xFF). Error ε(a, w) = approximate − exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

METRIC_NAMES = (
    "mae",
    "mae_percent",
    "wce",
    "wce_percent",
    "mre_percent",
    "ep_percent",
    "mse",
    "mean_error",
    "std_error",
)


def operand_values(signed: bool) -> np.ndarray:
    """The value of each byte code 0..255: 0..255 unsigned, two's complement (-128..127) signed."""
    codes = np.arange(256, dtype=np.int64)
    return codes - 256 * (codes >= 128) if signed else codes


def exact_table(signed: bool) -> np.ndarray:
    """The exact product table, int32 [256, 256], in byte-indexed orientation."""
    v = operand_values(signed)
    return np.outer(v, v).astype(np.int32)


def table_sha256(lut: npt.ArrayLike) -> str:
    """sha256 of a table as int32 little-endian, C order: the identity of a multiplier's table."""
    return hashlib.sha256(np.ascontiguousarray(lut, dtype="<i4").tobytes()).hexdigest()


def table_metrics(lut: np.ndarray, signed: bool) -> dict[str, float]:
    """EvoApprox metric definitions over all 2^16 operand pairs (docs/REFERENCES.md, Multiplier metrics)."""
    exact = exact_table(signed).astype(np.int64)
    err = lut.astype(np.int64) - exact
    abs_err = np.abs(err)
    nonzero = exact != 0
    return {
        "mae": float(abs_err.mean()),
        "mae_percent": float(abs_err.mean() / 2**16 * 100),
        "wce": float(abs_err.max()),
        "wce_percent": float(abs_err.max() / 2**16 * 100),
        "mre_percent": float(100 * (abs_err[nonzero] / np.abs(exact[nonzero])).mean()),
        "ep_percent": float(100 * (err != 0).mean()),
        "mse": float((err.astype(np.float64) ** 2).mean()),
        "mean_error": float(err.mean()),
        "std_error": float(err.std()),
    }


@dataclass(frozen=True, eq=False)
class Multiplier:
    """An 8-bit multiplier: table, operand format, energy relative to the exact multiplier, provenance.

    `source` is "builtin" or "imported"; `params` holds the family and its parameters (built-ins) or the
    imported file name, its format and any `published` header metadata (imports).
    """

    name: str
    signed: bool
    lut: np.ndarray  # int32 [256, 256], lut[activation_byte, weight_byte]
    energy_rel: float
    energy_method: str
    source: str = "builtin"
    params: dict[str, Any] = field(default_factory=dict)
    # yosys' generic-cell synthesis of the circuit (`dse.hardware.synth`; shipped in `synth.json`), or None
    synth_cells: int | None = None
    synth_area_rel: float | None = None  # relative to the exact multiplier of the same format

    def __post_init__(self) -> None:
        lut = np.ascontiguousarray(self.lut, dtype=np.int32)
        if lut.shape != (256, 256):
            raise ValueError(f"multiplier {self.name}: table must be [256, 256], got {list(lut.shape)}")
        lut.setflags(write=False)
        object.__setattr__(self, "lut", lut)

    @cached_property
    def sha256(self) -> str:
        """sha256 of the table as int32 little-endian, C order: the multiplier's identity."""
        return table_sha256(self.lut)

    @cached_property
    def error_table(self) -> np.ndarray:
        """ε = approximate − exact, int64 [256, 256]."""
        return self.lut.astype(np.int64) - exact_table(self.signed).astype(np.int64)

    @property
    def is_exact(self) -> bool:
        return not self.error_table.any()

    @property
    def dominated(self) -> bool:
        """An approximate design that costs at least the exact multiplier of its format (energy_rel >= 1):
        never worth choosing, so wildcard patterns (`"*"`) leave it out; its name still selects it."""
        return self.energy_rel >= 1.0 and not self.is_exact

    @cached_property
    def metrics(self) -> dict[str, float]:
        return table_metrics(self.lut, self.signed)

    @property
    def format(self) -> str:
        return "signed" if self.signed else "unsigned"

    def to_json(self) -> dict[str, Any]:
        """The JSON object `dse multipliers list/show --json` prints."""
        return {
            "name": self.name,
            "signed": self.signed,
            "energy_rel": self.energy_rel,
            "energy_method": self.energy_method,
            "synth_cells": self.synth_cells,
            "synth_area_rel": self.synth_area_rel,
            "dominated": self.dominated,
            "source": self.source,
            "params": self.params,
            "lut_sha256": self.sha256,
            **self.metrics,
        }

    def __repr__(self) -> str:
        return f"Multiplier({self.name!r}, {self.format}, energy_rel={self.energy_rel:.3f})"
