"""Input validation shared by every kernel entry point: clear errors, tables moved to the operands' device,
operand codes as the bytes that index the table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import torch

from dse.util import UserError

BACKENDS = ("auto", "reference", "cpu", "lowrank", "bitplane", "triton")
CODE_DTYPES = (torch.int8, torch.uint8)

Table: TypeAlias = "torch.Tensor | np.ndarray[Any, Any]"  # a [256, 256] integer table, torch or numpy
IntPair: TypeAlias = "int | Sequence[int]"  # stride / padding / dilation: one int or one per spatial axis


class KernelInputError(UserError, ValueError):
    """Bad operands, table or backend for an approximate kernel (a UserError, also a ValueError)."""


def check_backend(backend: str) -> str:
    """One of BACKENDS."""
    if backend not in BACKENDS:
        raise KernelInputError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def check_codes(t: object, name: str, ndim: int) -> torch.Tensor:
    """An int8 / uint8 tensor of `ndim` dimensions (8-bit operand codes)."""
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{name}: expected a torch int8/uint8 tensor of codes, got {type(t).__name__}")
    if t.dtype not in CODE_DTYPES:
        raise KernelInputError(
            f"{name}: expected int8 or uint8 8-bit codes, got {t.dtype} (quantize first; for float tensors "
            "holding code values use the *_ste functions)"
        )
    if t.dim() != ndim:
        raise KernelInputError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def code_bytes(t: torch.Tensor) -> torch.Tensor:
    """8-bit codes -> table index 0..255 (the operand's byte), as uint8 (int8 codes are viewed, not copied)."""
    return t.view(torch.uint8) if t.dtype == torch.int8 else t


def check_lut(lut: object, device: torch.device) -> torch.Tensor:
    """A [256,256] integer table (torch or numpy) -> int32 torch tensor on `device` (moved, never refused)."""
    if isinstance(lut, np.ndarray):
        if not np.issubdtype(lut.dtype, np.integer):
            raise KernelInputError(f"lut: expected an integer [256,256] table, got numpy {lut.dtype}")
        lut = torch.from_numpy(np.ascontiguousarray(lut).astype(np.int64))
    elif not isinstance(lut, torch.Tensor):
        raise KernelInputError(f"lut: expected a [256,256] integer tensor or array, got {type(lut).__name__}")
    if tuple(lut.shape) != (256, 256):
        raise KernelInputError(f"lut: expected shape [256,256], got {tuple(lut.shape)}")
    if lut.dtype.is_floating_point or lut.dtype.is_complex or lut.dtype == torch.bool:
        raise KernelInputError(f"lut: expected an integer table, got {lut.dtype}")
    if lut.dtype == torch.int64:
        lo, hi = int(lut.min()), int(lut.max())
        if lo < -(2**31) or hi >= 2**31:
            raise KernelInputError(f"lut: values must fit int32, got range [{lo}, {hi}]")
    return lut.to(device=device, dtype=torch.int32).contiguous()


def check_same_device(*named: tuple[str, torch.Tensor]) -> torch.device:
    """The device of the first named tensor, which every other one must be on too."""
    dev = named[0][1].device
    for name, t in named[1:]:
        if t.device != dev:
            raise KernelInputError(
                f"{name}: on {t.device}, but {named[0][0]} is on {dev}; put both on one device"
            )
    return dev


def check_pad_code(pad_code: int) -> int:
    """An 8-bit code (int8 or uint8 value) -> its byte 0..255."""
    try:
        v = int(pad_code)
    except (TypeError, ValueError):
        raise KernelInputError(f"pad_code: expected an integer 8-bit code, got {pad_code!r}") from None
    if not -128 <= v <= 255 or v != pad_code:
        raise KernelInputError(f"pad_code: expected an 8-bit code in [-128, 255], got {pad_code!r}")
    return v & 0xFF


def pair(v: IntPair, name: str, minimum: int) -> tuple[int, int]:
    """One int or two (height, width), each >= minimum -> (height, width)."""
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and i >= minimum for i in t):
        raise KernelInputError(f"{name}: expected an int >= {minimum} or a pair of them, got {v!r}")
    return t[0], t[1]
