"""`ApproxConv2d`: the convolution kind of `ApproxLayer` (any stride, padding, dilation, groups)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dse.kernels import prepare_conv2d
from dse.nn.exact import exact_conv_acc, exact_conv_unfold
from dse.nn.layer import ApproxLayer
from dse.nn.state import PreparedKernel, QState
from dse.quant import QuantFormat
from dse.util import UserError


def use_unfold(x: torch.Tensor) -> bool:
    """Whether the exact (quant-mode, no-grad) convolution takes the unfold + GEMM path: on CUDA."""
    return x.is_cuda


class ApproxConv2d(ApproxLayer):
    """A wrapped nn.Conv2d (zeros padding; padding="same" with odd effective kernels) sharing its Parameters."""

    kind = "conv"

    def __init__(self, conv: nn.Conv2d, fmt: QuantFormat, name: str = "") -> None:
        if conv.padding_mode != "zeros":
            raise UserError(
                f"layer {name}: padding_mode {conv.padding_mode!r} is not supported (use 'zeros')"
            )
        padding = conv.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # 'same'
                total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
                if any(t % 2 for t in total):
                    raise UserError(f"layer {name}: padding='same' with an even kernel is not supported")
                padding = tuple(t // 2 for t in total)
        super().__init__(conv.weight, conv.bias, fmt, name)
        self.stride: tuple[int, ...] = tuple(conv.stride)
        self.padding: tuple[int, ...] = tuple(padding)
        self.dilation: tuple[int, ...] = tuple(conv.dilation)
        self._groups = int(conv.groups)
        self.kernel_size: tuple[int, ...] = tuple(conv.kernel_size)

    @property
    def groups(self) -> int:
        return self._groups

    def _chan_view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self._groups)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, groups: int | None = None) -> torch.Tensor:
        g = self._groups if groups is None else groups
        if x.is_cuda and not (x.requires_grad or w.requires_grad):
            # cuDNN may pick Winograd/FFT algorithms, which are not exact on integers; without cuDNN the
            # convolution is im2col + GEMM (or a direct depthwise kernel): exact below 2^24. Training keeps
            # cuDNN (its value is rounded; bit-exactness matters where accuracies are measured, in no-grad).
            with torch.backends.cudnn.flags(enabled=False):
                return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, g)
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, g)

    def _exact_acc(self, xc: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        if self._groups == 1 and use_unfold(xc) and not (xc.requires_grad or wc.requires_grad):
            # CUDA, no grad: one unfold + chunked float32 GEMMs instead of cuDNN-less thnn_conv2d
            return exact_conv_unfold(xc, wc, self.stride, self.padding, self.dilation, self._chunk_bound())
        return exact_conv_acc(self._conv, xc, wc, self.kernel_size, self._groups, self._chunk_bound())

    def _prepare(self, st: QState, table: torch.Tensor) -> PreparedKernel:
        return prepare_conv2d(
            st.w_codes,
            table,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self._groups,
            pad_code=st.z_a_int,
        )

    def _code_sum(self, codes: torch.Tensor, z_a: int) -> torch.Tensor:
        c_per_group = self.weight.shape[1]
        ones = torch.ones(self._groups, c_per_group, *self.kernel_size, device=codes.device)
        centred = codes.to(torch.float32) - z_a  # zero padding of centred codes = padding with z_a
        s = self._conv(centred, ones).round().to(torch.int32) + self.fan_in * z_a  # [N, groups, Ho, Wo]
        return s.repeat_interleave(self.out_channels // self._groups, dim=1)

    def _record_positions(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._positions is None:
            self._positions = int(self.out_positions)
            if self._positions < 0:
                self._positions = int(y.shape[-2] * y.shape[-1])
                self.out_positions.fill_(self._positions)

    def gemm_operands(self, in_codes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group: (A [N·H_out·W_out, K] activation codes incl. padding codes, B [K, C_out/groups] weight
        codes), in the dtypes the kernel gets (sign-magnitude: B is the signed code, the multiplier sees |B|)."""
        z = self.pad_code
        xf = in_codes.to(torch.float32)
        ph, pw = self.padding
        if ph or pw:
            xf = F.pad(xf, (pw, pw, ph, ph), value=float(z))
        cols = F.unfold(xf, self.kernel_size, dilation=self.dilation, stride=self.stride)  # [N, C·kh·kw, L]
        k = self.fan_in
        n_out = self.out_channels // self._groups
        w = self.weight_codes()
        pairs = []
        for g in range(self._groups):
            a = cols[:, g * k : (g + 1) * k, :].permute(0, 2, 1).reshape(-1, k).round().to(in_codes.dtype)
            b = w[g * n_out : (g + 1) * n_out].reshape(n_out, k).t().contiguous()
            pairs.append((a, b))
        return pairs
