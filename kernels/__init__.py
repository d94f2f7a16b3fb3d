"""Approximate GEMM / convolution kernels (installed as `dse.kernels`).

One contract (DESIGN.md §6): `approx_matmul(a, b, lut) -> int32 [M, N]` with
out[m, n] = Σ_k lut[a[m, k] & 0xFF, b[k, n] & 0xFF], and `approx_conv2d` built on it; bit-exact against
the brute-force reference for every backend.
"""

from dse.kernels.reference import approx_conv2d_reference, approx_matmul_reference

__all__ = ["approx_conv2d_reference", "approx_matmul_reference"]
