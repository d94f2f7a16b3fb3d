"""The shape of a convolution: one type for the reference, the im2col lowering and the Triton conv kernel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dse.kernels.checks import IntPair, KernelInputError, check_pad_code, pair


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution of weights [C_out, C_in/groups, kh, kw] on NCHW inputs; padding holds `pad_code`
    (the byte of the operand format's real zero). Pairs are (height, width)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pad_code: int  # 0..255

    @classmethod
    def of(
        cls,
        w_shape: Sequence[int],
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        pad_code: int = 0,
        x_shape: Sequence[int] | None = None,
    ) -> ConvGeometry:
        """The validated geometry of weights of shape `w_shape` (and inputs of shape `x_shape`, if given)."""
        if not isinstance(groups, int) or groups < 1:
            raise KernelInputError(f"groups: expected a positive int, got {groups!r}")
        c_out, c_per_group, kh, kw = w_shape
        if c_out % groups:
            raise KernelInputError(f"w: C_out = {c_out} is not divisible by groups = {groups}")
        if x_shape is not None and x_shape[1] != c_per_group * groups:
            raise KernelInputError(
                f"x, w: x has {x_shape[1]} channels, but w expects C_in/groups·groups = {c_per_group}·{groups}"
            )
        return cls(
            (kh, kw),
            pair(stride, "stride", 1),
            pair(padding, "padding", 0),
            pair(dilation, "dilation", 1),
            groups,
            check_pad_code(pad_code),
        )

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(H_out, W_out) for an input of h x w (<= 0 when the dilated kernel does not fit)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def checked_output_size(self, h: int, w: int) -> tuple[int, int]:
        """output_size, or KernelInputError when the input is smaller than the padded, dilated kernel."""
        ho, wo = self.output_size(h, w)
        if ho <= 0 or wo <= 0:
            raise KernelInputError(
                f"x: input {h}x{w} is smaller than the dilated kernel {self.kernel} with padding {self.padding}"
            )
        return ho, wo
