"""`ApproxLinear`: the GEMM kind of `ApproxLayer` (inputs [..., K]; middle dimensions count as positions)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dse.kernels import prepare_matmul
from dse.nn.exact import exact_linear_acc
from dse.nn.layer import ApproxLayer
from dse.nn.state import LutState, PreparedKernel, QState
from dse.quant import QuantFormat


class ApproxLinear(ApproxLayer):
    """A wrapped nn.Linear sharing its Parameters."""

    kind = "linear"

    def __init__(self, linear: nn.Linear, fmt: QuantFormat, name: str = "") -> None:
        super().__init__(linear.weight, linear.bias, fmt, name)

    def _chan_view(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _exact_acc(self, xc: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        return exact_linear_acc(xc, wc, self._chunk_bound())

    def _b_matrix(self, st: QState) -> torch.Tensor:
        if st.b_matrix is None:
            st.b_matrix = st.w_codes.t().contiguous()
        return st.b_matrix

    def _prepare(self, st: QState, table: torch.Tensor) -> PreparedKernel:
        return prepare_matmul(self._b_matrix(st), table)

    def _kernel_acc(self, codes: torch.Tensor, ls: LutState) -> torch.Tensor:
        out = ls.prepared(codes.reshape(-1, codes.shape[-1]))
        return out.reshape(*codes.shape[:-1], out.shape[-1])

    def _code_sum(self, codes: torch.Tensor, z_a: int) -> torch.Tensor:
        return codes.to(torch.int32).sum(dim=-1, keepdim=True)

    def _record_positions(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._positions is None:
            self._positions = int(self.out_positions)
            if self._positions < 0:
                self._positions = int(math.prod(x.shape[1:-1]))
                self.out_positions.fill_(self._positions)

    def gemm_operands(self, in_codes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(A [M, K] activation codes, B [K, N] weight codes)]."""
        return [(in_codes.reshape(-1, in_codes.shape[-1]), self._b_matrix(self._qstate(in_codes.device)))]
