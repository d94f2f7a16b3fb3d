"""Straight-through training versions: the value is the table's, the gradient the exact product's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dse.kernels import KernelInputError, approx_conv2d, approx_conv2d_ste, approx_matmul, approx_matmul_ste
from kernel_tables import codes, exact_signed, random_table


def test_matmul_ste_value_and_gradient():
    g = torch.Generator().manual_seed(9)
    lut = random_table(g, 1000)
    a = codes((6, 11), torch.uint8, g).float().requires_grad_()
    b = codes((11, 4), torch.int8, g).float().requires_grad_()
    y = approx_matmul_ste(a, b, lut)
    assert torch.equal(y, approx_matmul(a.detach().to(torch.uint8), b.detach().to(torch.int8), lut).float())
    up = torch.randn(6, 4, generator=g)
    (y * up).sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ((a2 @ b2) * up).sum().backward()
    assert torch.allclose(a.grad, a2.grad) and torch.allclose(b.grad, b2.grad)


def test_conv_ste_value_and_gradient_with_pad_code():
    g = torch.Generator().manual_seed(10)
    lut = random_table(g, 1000)
    x = codes((2, 4, 6, 5), torch.uint8, g).float().requires_grad_()
    w = codes((4, 2, 3, 3), torch.int8, g).float().requires_grad_()
    y = approx_conv2d_ste(x, w, lut, 1, 1, (1, 2), 2, pad_code=3)
    xc, wc = x.detach().to(torch.uint8), w.detach().to(torch.int8)
    assert torch.equal(y, approx_conv2d(xc, wc, lut, 1, 1, (1, 2), 2, pad_code=3).float())
    up = torch.randn(y.shape, generator=g)
    (y * up).sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    exact = F.conv2d(F.pad(x2, (1, 1, 1, 1), value=3.0), w2, stride=1, dilation=(1, 2), groups=2)
    (exact * up).sum().backward()
    assert torch.allclose(x.grad, x2.grad) and torch.allclose(w.grad, w2.grad)


def test_ste_rejects_out_of_range_codes():
    with pytest.raises(KernelInputError, match=r"\[-128, 255\]"):
        approx_matmul_ste(torch.full((2, 2), 300.0), torch.ones(2, 2), exact_signed())
