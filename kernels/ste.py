"""Straight-through versions for training: the value is the table result, the gradient the exact product's.

Inputs are float tensors holding integer code values (e.g. 0..255 for uint8 activations, -127..127 for
weights); they are rounded and taken as bytes (value & 0xFF) for the table, as everywhere in dse.kernels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from dse.kernels.api import approx_conv2d, approx_matmul
from dse.kernels.checks import IntPair, KernelInputError, Table, check_pad_code, pair


def _to_codes(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
        raise KernelInputError(f"{name}: expected a float tensor holding integer code values")
    r = torch.round(t.detach())
    if r.numel() and (r.min() < -128 or r.max() > 255):
        raise KernelInputError(f"{name}: code values must lie in [-128, 255], got [{r.min():g}, {r.max():g}]")
    return (r.to(torch.int64) & 0xFF).to(torch.uint8)


class _MatmulSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a_f: torch.Tensor, b_f: torch.Tensor, lut: Table, backend: str) -> torch.Tensor:
        ctx.save_for_backward(a_f, b_f)
        y = approx_matmul(_to_codes(a_f, "a"), _to_codes(b_f, "b"), lut, backend=backend)
        return y.to(torch.promote_types(a_f.dtype, b_f.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        a_f, b_f = ctx.saved_tensors
        ga = grad @ b_f.t().to(grad.dtype) if ctx.needs_input_grad[0] else None
        gb = a_f.t().to(grad.dtype) @ grad if ctx.needs_input_grad[1] else None
        return ga, gb, None, None


def approx_matmul_ste(
    a_f: torch.Tensor, b_f: torch.Tensor, lut: Table, *, backend: str = "auto"
) -> torch.Tensor:
    """Float [M, N] equal to approx_matmul of the codes; backward is that of a_f @ b_f."""
    y: torch.Tensor = _MatmulSTE.apply(a_f, b_f, lut, backend)  # type: ignore[no-untyped-call]  # untyped in torch
    return y


class _Conv2dSTE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x_f: torch.Tensor,
        w_f: torch.Tensor,
        lut: Table,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        pad_code: int,
        backend: str,
    ) -> torch.Tensor:
        ctx.save_for_backward(x_f, w_f)
        ctx.conf = (stride, padding, dilation, groups, pad_code)
        y = approx_conv2d(
            _to_codes(x_f, "x"),
            _to_codes(w_f, "w"),
            lut,
            stride,
            padding,
            dilation,
            groups,
            pad_code=pad_code,
            backend=backend,
        )
        return y.to(torch.promote_types(x_f.dtype, w_f.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_f, w_f = ctx.saved_tensors
        stride, padding, dilation, groups, pad_code = ctx.conf
        ph, pw = padding
        with torch.enable_grad():
            xd = x_f.detach().requires_grad_(ctx.needs_input_grad[0])
            wd = w_f.detach().requires_grad_(ctx.needs_input_grad[1])
            # the exact product on the same padded input: padding holds pad_code, not float zero
            xp = F.pad(xd, (pw, pw, ph, ph), value=float(pad_code)) if ph or pw else xd
            y = F.conv2d(xp, wd, None, stride, 0, dilation, groups)
            wanted = [t for t in (xd, wd) if t.requires_grad]
            grads = iter(torch.autograd.grad(y, wanted, grad.to(y.dtype)) if wanted else [])
        gx = next(grads) if ctx.needs_input_grad[0] else None
        gw = next(grads) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None, None, None, None, None, None


def approx_conv2d_ste(
    x_f: torch.Tensor,
    w_f: torch.Tensor,
    lut: Table,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Float [N, C_out, H_out, W_out] equal to approx_conv2d of the codes; backward is that of the exact
    float convolution of x_f (padded with the value pad_code) and w_f."""
    check_pad_code(pad_code)
    y: torch.Tensor = _Conv2dSTE.apply(  # type: ignore[no-untyped-call]  # untyped in torch
        x_f,
        w_f,
        lut,
        pair(stride, "stride", 1),
        pair(padding, "padding", 0),
        pair(dilation, "dilation", 1),
        groups,
        int(pad_code),
        backend,
    )
    return y
