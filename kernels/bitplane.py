"""The `bitplane` backend: partial-product tables run as a few exact int8 GEMMs on oneDNN (CPU).

A multiplier built from an array of partial products a_i·b_j — exact, truncated, broken-array, perforated,
operand-truncated — has a table that is *linear in the weight's bits* and, per weight bit, a masked copy of
the activation:

    T[a, b] = Σ_j g_j(b) · c_j · ((a & m_j) >> s_j)

with g_j(b) the j-th bit of the weight byte (plus a constant term when T[a, 0] ≠ 0) or, for the
sign-magnitude effective tables of `dse.quant`, sign(w)·(bit j of |w|). Terms sharing an activation
transform (m, s) are merged into one weight function F(b) = Σ c_j·g_j(b), which is split into base-64
digits F = Σ_d 64^d·G_d(b) with |G_d| ≤ 63. Each (transform, digit) is a *plane*:

    out[m, n] = Σ_d 64^d · Σ_planes Σ_k h_p(a[m, k]) · G_p(b[k, n])

and each digit level is ONE u8 × s8 -> s32 GEMM over the planes concatenated along K (oneDNN's quantized
linear, `torch.ops.onednn.qlinear_pointwise`, with float32 output). It is exact because:
- the activation operand h_p(a) = (a & m) >> s is a uint8 and the weight operand |G| ≤ 63 < 64, so the
  pairwise u8·s8 sums of AVX2's vpmaddubsw (int16, saturating) stay below 2·255·64 = 32,640 < 32,767;
- oneDNN accumulates in int32; K is cut into chunks small enough that every GEMM result stays below 2^24,
  so its float32 output holds the integer exactly; chunks and digit levels are added in int32.
`available()` also runs a worst-case self-check once per process and turns the backend off if this CPU's
oneDNN does not reproduce it exactly.

Cost: a rank-r partial-product table needs about r planes (2 for the exact product, 2-8 for the library's
designs); int8 GEMM runs ~2.2x float32 on AVX2 at N = 64, less at small N, and the mask transform costs a pass
over the planes, so whether it beats the cpu backend depends on K, N and the planes: the dispatcher races
them (`dispatch.auto_backend`). Tables of any other structure (Mitchell, DRUM, evolved ones)
have no such decomposition (`bitplane_planes` returns None) and go to the other backends.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from dse.kernels.cpu import FLOAT32_EXACT
from dse.kernels.geometry import ConvGeometry

DIGIT_BITS = 6  # weight digits in [-63, 63]: no int16 saturation in u8·s8 pair sums (2·255·63 < 2^15)
DIGIT = 1 << DIGIT_BITS
BLOCK_BYTES = 1 << 22  # activation planes per GEMM call (rows in blocks): 4 MB beat 1 and 16 MB at M=131072
MAX_PLANES = 24  # beyond this the table is not worth running as int8 GEMMs

_BYTES = np.arange(256, dtype=np.int64)
_BITS = (_BYTES[None, :] >> np.arange(8)[:, None]) & 1  # [8, 256]: bit j of byte b
_SIGNED = _BYTES - 256 * (_BYTES >= 128)  # the int8 value of each byte
_SM_BITS = np.sign(_SIGNED)[None, :] * ((np.abs(_SIGNED)[None, :] >> np.arange(8)[:, None]) & 1)


@dataclass(frozen=True)
class Plane:
    """h(a) = (a & mask) >> shift (uint8), times the weight digit G(b) (|G| ≤ 63), at scale 64^level."""

    mask: int
    shift: int
    level: int
    weights: np.ndarray  # int64 [256]: G for each weight byte

    @property
    def step_bound(self) -> int:
        """Largest |h(a)·G(b)|: one K step of this plane's GEMM."""
        return (self.mask >> self.shift) * int(np.abs(self.weights).max())


@dataclass(frozen=True)
class BitPlanes:
    """The planes of one table: T[a, b] == Σ_p 64^level_p · h_p(a) · G_p(b) for every byte pair."""

    planes: tuple[Plane, ...]
    basis: str  # "byte" or "sign-magnitude"

    def levels(self) -> list[int]:
        return sorted({p.level for p in self.planes})


def _masked_form(d: np.ndarray) -> tuple[int, int, int] | None:
    """(mask, shift, coef) with d(a) == coef·((a & mask) >> shift) for every byte a, else None."""
    if not d.any():
        return 0, 0, 0
    single = d[1 << np.arange(8)]
    mask = int(sum(1 << i for i in range(8) if single[i] != 0))
    if d[0] != 0 or mask == 0:
        return None
    low = (mask & -mask).bit_length() - 1
    v = int(single[low])
    twos = (abs(v) & -abs(v)).bit_length() - 1  # v = odd · 2^twos
    if twos >= low:
        shift, coef = 0, v >> low
    else:
        shift, coef = low - twos, v >> twos
    if not np.array_equal(d, coef * ((_BYTES & mask) >> shift)):
        return None
    return mask, shift, coef


def _digits(f: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Signed base-64 digits of an integer weight function: f == Σ 64^d·G_d, |G_d| ≤ 63 (non-zero ones)."""
    sign, mag = np.sign(f), np.abs(f)
    out = []
    level = 0
    while mag.any():
        g = sign * (mag & (DIGIT - 1))
        if g.any():
            out.append((level, g))
        mag >>= DIGIT_BITS
        level += 1
    return out


def _decompose(lut: np.ndarray) -> BitPlanes | None:
    t = lut.astype(np.int64)
    for basis in ("sign-magnitude", "byte"):
        if basis == "byte":
            const = t[:, 0]
            terms = [(const, np.ones(256, np.int64))]
            terms += [(t[:, 1 << j] - const, _BITS[j]) for j in range(8)]
        else:
            if t[:, 0].any():
                continue
            # D_j(a) = T[a, +2^j]; the int8 code of -128 (byte 0x80) carries bit 7 of the magnitude 128
            terms = [(t[:, 1 << j] * (1 if j < 7 else -1), _SM_BITS[j]) for j in range(8)]
        recon = sum(np.outer(d, g) for d, g in terms)
        if not np.array_equal(recon, t):
            continue
        merged: dict[tuple[int, int], np.ndarray] = {}
        for d, g in terms:
            form = _masked_form(d)
            if form is None:
                break
            mask, shift, coef = form
            if coef:
                merged[(mask, shift)] = merged.get((mask, shift), 0) + coef * g
        else:
            planes = tuple(
                Plane(mask, shift, level, g)
                for (mask, shift), f in sorted(merged.items())
                for level, g in _digits(f)
            )
            if not planes:  # the all-zero table
                planes = (Plane(0, 0, 0, np.zeros(256, np.int64)),)
            if len(planes) > MAX_PLANES:
                return None
            return BitPlanes(planes, basis)
    return None


@lru_cache(maxsize=256)
def _decompose_cached(key: bytes) -> BitPlanes | None:
    return _decompose(np.frombuffer(key, dtype=np.int32).reshape(256, 256))


def bitplane_planes(lut: torch.Tensor) -> BitPlanes | None:
    """The plane decomposition of an int32 [256, 256] table, or None if it has none (cached by bytes)."""
    return _decompose_cached(lut.detach().to("cpu", torch.int32).contiguous().numpy().tobytes())


# ------------------------------------------------------------------------------------- oneDNN int8 GEMM
def _qlinear(
    a: torch.Tensor, packed: object, n: int, unit_scales: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """uint8 a [M, K'] · prepacked int8 weights [N, K'] -> float32 [M, N] (exact integers below 2^24).
    `unit_scales`: the (ones(N), zeros(N)) weight scales and zero points, made once by the caller."""
    w_scale, w_zp = unit_scales or (torch.ones(n), torch.zeros(n, dtype=torch.long))
    y: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
        a, 1.0, 0, packed, w_scale, w_zp, None, 1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip
    return y


def _prepack(w: torch.Tensor) -> object:
    """int8 weights [N, K'] -> oneDNN's packed form."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ops.onednn.qlinear_prepack(w.contiguous(), None)


@lru_cache(maxsize=1)
def _onednn_ok() -> bool:
    """oneDNN's quantized linear exists here and is exact on this CPU for the operand ranges we use."""
    try:
        if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]  # untyped in torch
            return False
        g = torch.Generator().manual_seed(0)
        a = torch.randint(0, 256, (37, 96), generator=g, dtype=torch.int64)
        a[:8] = 255  # the int16-saturation worst case: 255 against ±63 in adjacent pairs
        w = torch.randint(-(DIGIT - 1), DIGIT, (5, 96), generator=g, dtype=torch.int64)
        w[0], w[1] = DIGIT - 1, -(DIGIT - 1)
        y = _qlinear(a.to(torch.uint8), _prepack(w.to(torch.int8)), 5)
        return bool(torch.equal(y.to(torch.int64), a @ w.t()))
    except Exception:
        return False


def _qconv(
    x: torch.Tensor, packed: object, n: int, geometry: ConvGeometry, padding: list[int]
) -> torch.Tensor:
    """uint8 x [B, C', H, W] (channels last) * prepacked int8 weights [N, C', kh, kw] -> float32 [B, N, Ho,
    Wo] (channels last; exact integers below 2^24). Padding positions read the input zero point, 0."""
    y: torch.Tensor = torch.ops.onednn.qconv2d_pointwise(
        x, 1.0, 0, packed, torch.ones(n), torch.zeros(n, dtype=torch.long), None, list(geometry.stride),
        padding, list(geometry.dilation), 1, 1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip
    return y


def _prepack_conv(w: torch.Tensor, geometry: ConvGeometry, padding: list[int]) -> object:
    """int8 conv weights [N, C', kh, kw] -> oneDNN's packed form."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ops.onednn.qconv_prepack(
            w.contiguous(), torch.ones(w.shape[0]), 1.0, 0, list(geometry.stride), padding,
            list(geometry.dilation), 1, None,
        )  # fmt: skip


@lru_cache(maxsize=1)
def _onednn_conv_ok() -> bool:
    """oneDNN's quantized convolution exists here and is exact on this CPU for our operand ranges (the
    int16-saturation worst case included); otherwise convolutions take the im2col + GEMM path."""
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (2, 40, 6, 5), generator=g, dtype=torch.int64)
        x[0] = 255
        w = torch.randint(-(DIGIT - 1), DIGIT, (5, 40, 3, 3), generator=g, dtype=torch.int64)
        w[0], w[1] = DIGIT - 1, -(DIGIT - 1)
        geo = ConvGeometry.of(tuple(w.shape), 1, 1)
        xq = x.to(torch.uint8).contiguous(memory_format=torch.channels_last)
        y = _qconv(xq, _prepack_conv(w.to(torch.int8), geo, [1, 1]), 5, geo, [1, 1])
        ref = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
        return bool(torch.equal(y.double(), ref))
    except Exception:
        return False


def conv_available() -> bool:
    """Convolutions can run as oneDNN int8 convolutions on the planes (`BitPlaneWeights.apply_conv`)."""
    return _onednn_conv_ok()


def available(device: str | torch.device = "cpu") -> bool:
    """The backend can run on this device: oneDNN's int8 GEMM on CPU (self-checked for exactness once per
    process). Never on CUDA: the same planes through torch._int_mm ran 14x slower than the triton backend on
    an H100 (158 vs 2200 G LUT-MAC/s at M=65536 K=576 N=64) and cuBLASLt refused some int8 shapes."""
    return torch.device(device).type == "cpu" and _onednn_ok()


_scratch = threading.local()


def _scratch_bytes(n: int) -> torch.Tensor:
    """A reusable uint8 buffer of at least n bytes (per thread): a fresh tens-of-MB tensor per GEMM costs
    more in page faults than the mask transform itself."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=torch.uint8)
        _scratch.buf = buf
    return buf[:n]


@dataclass
class _ConvUnit:
    """One convolution: the planes of one digit level over input channels [c0, c1), weights packed."""

    masks: torch.Tensor  # uint8 [P, 1]
    shifts: tuple[int, ...]
    c0: int
    c1: int
    scale: int
    packed: object

    @property
    def identity(self) -> bool:
        return self.masks.shape[0] == 1 and int(self.masks[0, 0]) == 0xFF and self.shifts == (0,)


@dataclass
class _Unit:
    """One GEMM: the planes of one digit level over K steps [k0, k1), weights packed for oneDNN."""

    masks: torch.Tensor  # uint8 [P, 1]: activation masks of the planes, in weight order
    shifts: tuple[int, ...]
    k0: int
    k1: int
    scale: int
    packed: object  # oneDNN's packed weights
    nbytes: int


class BitPlaneWeights:
    """Weights b [G, K, N] (bytes) prepared as int8 plane GEMMs for one decomposed table."""

    def __init__(self, b: torch.Tensor, planes: BitPlanes):
        g, k, n = b.shape
        self.n = n
        limit = FLOAT32_EXACT - 1  # largest exact GEMM result: oneDNN's float32 output holds integers to 2^24
        self.units: list[list[_Unit]] = []  # per group
        by_level: dict[int, list[Plane]] = {}
        for p in planes.planes:
            by_level.setdefault(p.level, []).append(p)
        self._b, self._by_level = b, by_level  # kept for the convolution units, built on first use
        self._conv: dict[ConvGeometry, list[_ConvUnit] | None] = {}
        idx = b.long()
        self.unit_scales = (torch.ones(n), torch.zeros(n, dtype=torch.long))  # oneDNN: scale 1, zero point 0
        digit_of = {id(p): torch.from_numpy(p.weights).to(b.device) for p in planes.planes}
        for gi in range(g):
            units = []
            for level, ps in sorted(by_level.items()):
                step = max(1, sum(p.step_bound for p in ps))
                chunk = max(1, min(k, limit // step))
                for k0 in range(0, k, chunk):
                    k1 = min(k, k0 + chunk)
                    # weight rows in [plane][k] order, matching the activation buffer [M, P, k1 - k0]
                    digits = [digit_of[id(p)][idx[gi, k0:k1]] for p in ps]
                    w = torch.stack(digits).permute(2, 0, 1).reshape(n, -1)  # [N, P·Kc], int64
                    packed = _prepack(w.to(torch.int8))
                    masks = torch.tensor([p.mask for p in ps], dtype=torch.uint8, device=b.device)[:, None]
                    units.append(
                        _Unit(masks, tuple(p.shift for p in ps), k0, k1, DIGIT**level, packed, w.numel())
                    )
            self.units.append(units)

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes for units in self.units for u in units)

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        """a: [G, M, K] uint8 codes -> int32 [G, M, N]; rows in blocks whose plane buffer stays BLOCK_BYTES."""
        g, m, _ = a.shape
        out = torch.zeros(g, m, self.n, dtype=torch.int32, device=a.device)
        widest = max((u.masks.shape[0] * (u.k1 - u.k0) for units in self.units for u in units), default=1)
        rows = max(1, BLOCK_BYTES // widest)
        for gi in range(g):
            for r0 in range(0, m, rows):
                r1 = min(m, r0 + rows)
                for u in self.units[gi]:
                    out[gi, r0:r1] += self._unit(a[gi, r0:r1], u)
        return out

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor | None:
        """A convolution straight from x [B, C, H, W] uint8 codes: per digit level (and chunk of input
        channels) ONE oneDNN int8 convolution over the masked planes of x stacked along channels — no
        im2col, the plane transform runs on x instead of on the 9x larger im2col matrix (ResNet-20 layer
        16->16 3x3 on 500 28x28 images, one thread: 0.035 s against 0.39 s for im2col + plane GEMMs).
        -> int32 [B, 1, N, Ho·Wo]; None (the caller uses im2col + `apply`) for grouped convolutions, when
        one input channel's taps exceed the exact float32 bound, or where oneDNN's convolution is absent
        or inexact."""
        if geometry.groups != 1 or x.device.type != "cpu" or not _onednn_conv_ok():
            return None
        if geometry not in self._conv:
            self._conv[geometry] = self._conv_units(geometry)
        units = self._conv[geometry]
        if units is None:
            return None
        ho, wo = geometry.checked_output_size(x.shape[2], x.shape[3])
        ph, pw = geometry.padding
        if geometry.pad_code and (ph or pw):  # padding must read pad_code's planes, not zero: pad first
            x = torch.nn.functional.pad(x, (pw, pw, ph, ph), value=geometry.pad_code)
        x_cl = x.permute(0, 2, 3, 1).contiguous()  # [B, H, W, C] (free for a channels-last x)
        out: torch.Tensor | None = None
        for u in units:
            p = u.masks.shape[0]
            if u.identity:  # the plane is x itself (mask 0xFF, no shift): no transform pass
                h = x_cl[:, :, :, u.c0 : u.c1].contiguous()
            else:
                h = torch.bitwise_and(x_cl[:, :, :, None, u.c0 : u.c1], u.masks)  # [B, H, W, P, Cc]
                for i, s in enumerate(u.shifts):
                    if s:
                        h[:, :, :, i].bitwise_right_shift_(s)
            h = h.view(*h.shape[:3], p * (u.c1 - u.c0)).permute(0, 3, 1, 2)  # NCHW shape, channels last
            y = _qconv(h, u.packed, self.n, geometry, self._conv_padding(geometry))
            y32 = y.to(torch.int32)  # stays channels last: no layout pass; later layers read it as it is
            if u.scale != 1:
                y32.mul_(u.scale)
            out = y32 if out is None else out.add_(y32)
        assert out is not None  # at least one unit
        # [B, 1, N, Ho·Wo] as a view (channels-last strides merge Ho and Wo)
        return out.view(x.shape[0], 1, self.n, ho * wo)

    @staticmethod
    def _conv_padding(geometry: ConvGeometry) -> list[int]:
        return [0, 0] if geometry.pad_code else list(geometry.padding)

    def _conv_units(self, geometry: ConvGeometry) -> list[_ConvUnit] | None:
        kh, kw = geometry.kernel
        b = self._b[0]  # [K, N], K in (channel, kh, kw) order
        k = b.shape[0]
        if k % (kh * kw):
            return None
        c = k // (kh * kw)
        w = b.t().reshape(self.n, c, kh, kw).long()
        limit = FLOAT32_EXACT - 1
        units = []
        for level, ps in sorted(self._by_level.items()):
            step = max(1, sum(p.step_bound for p in ps)) * kh * kw  # one input channel, all its taps
            if step > limit:
                return None
            cc = max(1, min(c, limit // step))
            for c0 in range(0, c, cc):
                c1 = min(c, c0 + cc)
                digits = [torch.from_numpy(p.weights)[w[:, c0:c1]] for p in ps]  # [N, Cc, kh, kw] each
                wq = torch.stack(digits, dim=1).reshape(self.n, -1, kh, kw).to(torch.int8)  # [N, P·Cc, ...]
                masks = torch.tensor([p.mask for p in ps], dtype=torch.uint8)[:, None]
                packed = _prepack_conv(wq, geometry, self._conv_padding(geometry))
                units.append(_ConvUnit(masks, tuple(p.shift for p in ps), c0, c1, DIGIT**level, packed))
        return units

    def _unit(self, a: torch.Tensor, u: _Unit) -> torch.Tensor:
        """One plane GEMM on rows a [M, K] -> int32 [M, N], already scaled by 64^level."""
        m, p = a.shape[0], u.masks.shape[0]
        h = _scratch_bytes(m * p * (u.k1 - u.k0)).view(m, p, u.k1 - u.k0)
        torch.bitwise_and(a[:, None, u.k0 : u.k1], u.masks, out=h)
        for i, s in enumerate(u.shifts):
            if s:
                h[:, i].bitwise_right_shift_(s)
        y = _qlinear(h.view(m, -1), u.packed, self.n, self.unit_scales).to(torch.int32)
        return y if u.scale == 1 else y.mul_(u.scale)
