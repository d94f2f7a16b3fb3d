"""Public entry points: validation, backend choice, conv lowering, prepared weights, batched candidates.

Everything reduces to one *grouped* GEMM: A [G, M, K] activation codes against B [G, K, N] weight codes
through a table. A plain matmul is G = 1; a convolution is im2col (padding filled with `pad_code`) with the
groups as G, so grouped and depthwise convolutions run as one batched call without a Python loop over groups.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from dse.kernels import bitplane, cpu, lowrank
from dse.kernels.checks import (
    KernelInputError,
    check_backend,
    check_codes,
    check_lut,
    check_pad_code,
    check_same_device,
    pair,
)
from dse.kernels.reference import approx_matmul_reference

# Dispatcher thresholds (measured with `dse bench kernels`, see docs/ARCHITECTURE.md "dse.kernels").
CPU_LOWRANK_MAX_COST = 3.0  # lowrank enters the CPU race when rank·(2 if float64 else 1) <= this (rank 3
# ties with cpu at M=4096 K=576 N=64, one core: 0.24x vs 0.24x float32; higher ranks never won)
CUDA_LOWRANK_MAX_COST = 2.0  # H100: lowrank at rank 7 ran 40-57 G/s against triton's 2.9-3.4 T; ranks <= 2
# (exact products) were not timed apart: the race decides
# below this K the plane transform dominates: bitplane never won (0.2-0.5x cpu at K <= 25)
BITPLANE_MIN_K = 32
# triton: implicit im2col for groups with at least this many output channels (candidates included)
DIRECT_CONV_MIN_N = 8
CPU_GATHER_MAX_M = 48  # one-off call with fewer activation rows: direct gather beats building weight tables


def triton_usable(device: torch.device) -> bool:
    """Triton can run here: CUDA tensors with triton installed, or TRITON_INTERPRET=1 (CPU, for tests)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1" and device.type == "cpu"


def _codes(t: torch.Tensor) -> torch.Tensor:
    """8-bit codes -> table index 0..255 (the operand's byte), as uint8."""
    return t.view(torch.uint8) if t.dtype == torch.int8 else t


# ----------------------------------------------------------------------------------------------- plans
class _Plan:
    """Weights + table(s) prepared for one backend; `apply(A [G,M,K] uint8) -> int32 [G, M, N_total]`."""

    backend: str
    widths: tuple[int, ...]

    def apply(self, a: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor | None:
        """A convolution straight from x [B, C, H, W] (int32 [B, G, N_total, Ho·Wo]), or None: the caller
        runs `apply` on the im2col of x instead (what every backend but triton does)."""
        return None

    nbytes = 0


class _ReferencePlan(_Plan):
    backend = "reference"

    def __init__(self, pairs):
        self.pairs = pairs
        self.widths = tuple(b.shape[2] for b, _ in pairs)

    def apply(self, a):
        outs = []
        for b, lut in self.pairs:
            outs.append(torch.stack([approx_matmul_reference(a[g], b[g], lut) for g in range(a.shape[0])]))
        return torch.cat(outs, dim=2)


class _CpuPlan(_Plan):
    """Weight-stationary embedding_bag; a first call with tiny M uses a direct gather instead (building the
    tables would cost more than the whole product); later calls build the tables once and keep them."""

    backend = "cpu"

    def __init__(self, pairs):
        self.pairs = pairs
        self.widths = tuple(b.shape[2] for b, _ in pairs)
        self.tables: cpu.WeightTables | None = None
        self.calls = 0

    @property
    def nbytes(self) -> int:
        return self.tables.nbytes if self.tables is not None else 0

    def apply(self, a):
        self.calls += 1
        streamed = self.tables is not None and not self.tables.slabs  # rebuilt per call: gather if tiny
        if (self.tables is None and self.calls == 1 or streamed) and a.shape[1] < CPU_GATHER_MAX_M:
            return torch.cat([cpu.gather_matmul(a, b, lut) for b, lut in self.pairs], dim=2)
        if self.tables is None:
            self.tables = cpu.build_weight_tables(self.pairs)
        return cpu.apply_weight_tables(a, self.tables)


class _PerPairPlan(_Plan):
    """Each (weights, table) pair prepared on its own (`prepare(b, lut)` -> an object with `.nbytes`),
    applied one after the other (`run(a, prepared)` -> int32 [G, M, N_i]), outputs concatenated."""

    def __init__(self, pairs, prepare, run):
        self.weights = [prepare(b, lut) for b, lut in pairs]
        self.widths = tuple(b.shape[2] for b, _ in pairs)
        self.run = run

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.weights)

    def apply(self, a):
        return torch.cat([self.run(a, w) for w in self.weights], dim=2)


class _LowRankPlan(_PerPairPlan):
    backend = "lowrank"

    def __init__(self, pairs):
        def prepare(b, lut):
            return lowrank.build_lowrank_weights(b, lowrank.lowrank_factors(lut))

        super().__init__(pairs, prepare, lowrank.apply_lowrank)


class _BitPlanePlan(_PerPairPlan):
    backend = "bitplane"

    def __init__(self, pairs):
        def prepare(b, lut):
            return bitplane.BitPlaneWeights(b, bitplane.bitplane_planes(lut))

        super().__init__(pairs, prepare, lambda a, w: w.apply(a))


class _TritonPlan(_Plan):
    backend = "triton"

    def __init__(self, pairs):
        from dse.kernels.triton_lut_matmul import build_triton_tables

        self.tables = build_triton_tables(pairs)
        self.widths = tuple(b.shape[2] for b, _ in pairs)

    @property
    def nbytes(self) -> int:
        return self.tables.nbytes

    def apply(self, a):
        from dse.kernels.triton_lut_matmul import triton_lut_matmul

        return triton_lut_matmul(a, self.tables)

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor | None:
        """Implicit im2col (codes gathered from x inside the kernel, output written in NCHW order):
        int32 [B, G, N_total, Ho·Wo]; None (use im2col) when x is too large for the kernel's int32 offsets
        or the groups are narrow (depthwise: 26 vs 50 G LUT-MAC/s with im2col on an H100)."""
        from dse.kernels.triton_lut_matmul import conv_fits, triton_lut_conv

        if not conv_fits(x) or self.tables.t.shape[3] < DIRECT_CONV_MIN_N:
            return None
        return triton_lut_conv(x, self.tables, geometry)


def _choose(pairs, backend: str, device: torch.device) -> list[tuple[str, list[int]]]:
    """Backend per candidate: [(backend, candidate indices)], candidates sharing a backend kept together."""
    if backend == "triton" and not triton_usable(device):
        raise KernelInputError(
            "backend='triton': needs CUDA tensors and the triton package (or TRITON_INTERPRET=1 on CPU for "
            f"tests); got {device} tensors" + ("" if _has_triton() else " and triton is not installed")
        )
    if backend != "auto":
        if backend == "lowrank":
            for i, (_, lut) in enumerate(pairs):
                if lowrank.lowrank_factors(lut) is None:
                    raise KernelInputError(
                        f"backend='lowrank': table {i} has rank above {lowrank.MAX_RANK} (or no exact "
                        "integer factorisation); use backend='auto'"
                    )
        if backend == "bitplane":
            if not bitplane.available(device):
                raise KernelInputError(
                    f"backend='bitplane': runs on CPU tensors with PyTorch's oneDNN int8 GEMM only, not "
                    f"usable for {device} tensors here (on CUDA use 'triton' or 'auto')"
                )
            for i, (_, lut) in enumerate(pairs):
                if bitplane.bitplane_planes(lut) is None:
                    raise KernelInputError(
                        f"backend='bitplane': table {i} is not a partial-product table (not linear in the "
                        "weight's bits with masked activations); use backend='auto'"
                    )
        return [(backend, list(range(len(pairs))))]
    groups, k = pairs[0][0].shape[0], pairs[0][0].shape[1]
    chosen: dict[str, list[int]] = {}
    for i, (b, lut) in enumerate(pairs):
        chosen.setdefault(_auto_backend(lut, k, b.shape[2], groups, device), []).append(i)
    order = ("bitplane", "lowrank", "triton", "cpu")
    return [(b, chosen[b]) for b in order if b in chosen]


def _auto_backend(lut, k: int, n: int, groups: int, device: torch.device) -> str:
    """Backend for one table: the fastest, by a measured race, of the backends that can run it here —
    CPU: cpu, lowrank (rank·dtype cost <= CPU_LOWRANK_MAX_COST), bitplane (oneDNN int8 GEMMs);
    CUDA: triton, lowrank (cost <= CUDA_LOWRANK_MAX_COST).
    bitplane needs a partial-product table, G = 1 and K >= BITPLANE_MIN_K."""
    cuda = device.type == "cuda"
    default = "triton" if cuda and triton_usable(device) else "cpu"
    options: dict[str, float] = {default: 0}
    f = lowrank.lowrank_factors(lut)
    if f is not None and f.cost(k) <= (CUDA_LOWRANK_MAX_COST if cuda else CPU_LOWRANK_MAX_COST):
        options["lowrank"] = f.cost(k)
    if groups == 1 and k >= BITPLANE_MIN_K and bitplane.available(device):
        p = bitplane.bitplane_planes(lut)
        if p is not None:
            options["bitplane"] = len(p.planes)
    if not cuda and len(options) > 1 and groups * k * 256 * n * 4 > cpu.KEEP_TABLE_BYTES:
        # the cpu backend's weight tables would be rebuilt on every call: never the fastest, slow to race
        del options["cpu"]
    if len(options) == 1:
        return next(iter(options))
    return _fastest(lut, k, n, groups, options, device)


_RACES: dict[tuple, str] = {}


def _fastest(
    lut: torch.Tensor, k: int, n: int, groups: int, options: dict[str, float], device: torch.device
) -> str:
    """The fastest of the given backends for [G, K, N] weights through a table like `lut`, measured.

    Which wins depends on K, N, G, the table's rank or plane count, the device's instructions and the
    thread count (CPU, 1 thread, 5 planes: bitplane 0.4x cpu at K=25 N=16, 1.1x at K=150 N=16, 2.4x at
    K=400 N=120; lowrank's float GEMMs lose on the small layers of the search's networks), so the candidates
    are raced on random operands of the shape (about 2^18 activation codes on CPU, 2^22 on CUDA), best of
    two, once per (device, shape, options, threads) per process: milliseconds to a few hundred ms, never
    affecting results (all are bit-exact). `options` maps each candidate to what its speed depends on
    besides the shape (rank cost, planes)."""
    key = (str(device), k, n, groups, tuple(sorted(options.items())), torch.get_num_threads())
    if key not in _RACES:
        g = torch.Generator().manual_seed(0)
        m = max(64, min(4096, (1 << 18) // k)) if device.type == "cpu" else max(256, (1 << 22) // k)
        a = torch.randint(0, 256, (groups, m, k), generator=g).to(torch.uint8).to(device)
        b = torch.randint(0, 256, (groups, k, n), generator=g).to(torch.uint8).to(device)
        pairs = [(b, lut)]
        times = {}
        for backend in options:
            plan = _make_plan(backend, pairs)
            plan.apply(a)
            times[backend] = min(wall_seconds(lambda plan=plan: plan.apply(a), device) for _ in range(2))
        _RACES[key] = min(times, key=times.get)
    return _RACES[key]


def wall_seconds(fn, device: torch.device) -> float:
    """Wall-clock seconds of fn(), with CUDA work finished before and after (shared by the race and the
    benchmarks)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401

        return True
    except Exception:
        return False


def _make_plan(backend: str, pairs) -> _Plan:
    if backend == "reference":
        return _ReferencePlan(pairs)
    if backend == "cpu":
        return _CpuPlan(pairs)
    if backend == "lowrank":
        return _LowRankPlan(pairs)
    if backend == "bitplane":
        return _BitPlanePlan(pairs)
    return _TritonPlan(pairs)


class _MultiPlan:
    """Several (weights, table) candidates sharing G and K: per-backend plans, outputs split per candidate."""

    def __init__(self, pairs, backend: str, device: torch.device):
        self.count = len(pairs)
        self.parts = [
            (ix, _make_plan(b, [pairs[i] for i in ix])) for b, ix in _choose(pairs, backend, device)
        ]

    @property
    def backends(self) -> list[str]:
        out = [""] * self.count
        for ix, plan in self.parts:
            for i in ix:
                out[i] = plan.backend
        return out

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for _, p in self.parts)

    def apply(self, a: torch.Tensor) -> list[torch.Tensor]:
        outs: list[torch.Tensor | None] = [None] * self.count
        for ix, plan in self.parts:
            y = plan.apply(a)
            parts = torch.split(y, list(plan.widths), dim=2)
            for i, part in zip(ix, parts):
                outs[i] = part.contiguous() if len(parts) > 1 else part
        return outs

    def apply_conv(self, x: torch.Tensor, geometry: ConvGeometry) -> list[torch.Tensor]:
        """x [B, C, H, W] uint8 codes -> [int32 [B, C_out_i, Ho, Wo]] per candidate: backends with an
        implicit-im2col kernel read x directly, the others share one im2col."""
        b = x.shape[0]
        ho, wo = geometry.checked_output_size(x.shape[2], x.shape[3])
        outs: list[torch.Tensor | None] = [None] * self.count
        a = None
        for ix, plan in self.parts:
            y = plan.apply_conv(x, geometry)
            if y is not None:  # [B, G, N_total, Ho·Wo]
                for i, part in zip(ix, torch.split(y, list(plan.widths), dim=2)):
                    outs[i] = part.reshape(b, -1, ho, wo)
                continue
            if a is None:
                a = geometry.im2col(x)
            y = plan.apply(a)
            for i, part in zip(ix, torch.split(y, list(plan.widths), dim=2)):
                outs[i] = _output(part, b, ho, wo)
        return outs


# ---------------------------------------------------------------------------------------------- matmul
def _matmul_pairs(b_luts, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs = []
    k = None
    for i, (b, lut) in enumerate(b_luts):
        name = "b" if len(b_luts) == 1 else f"candidates[{i}].b"
        check_codes(b, name, 2)
        check_same_device(("a", torch.empty(0, device=device)), (name, b))
        if k is not None and b.shape[0] != k:
            raise KernelInputError(
                f"{name}: expected K = {k} rows like the other candidates, got {b.shape[0]}"
            )
        k = b.shape[0]
        pairs.append((_codes(b).unsqueeze(0), check_lut(lut, device)))
    return pairs


@dataclass
class _Prepared:
    """What PreparedMatmul and PreparedConv2d share: a plan of prepared (weights, table) candidates."""

    plan: _MultiPlan

    @property
    def backend(self) -> str:
        return self.plan.backends[0]

    @property
    def backends(self) -> list[str]:
        """Backend of each prepared candidate."""
        return self.plan.backends

    @property
    def nbytes(self) -> int:
        return self.plan.nbytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_all(x)[0]

    def apply_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


@dataclass
class PreparedMatmul(_Prepared):
    """Weights b [K, N] and a table, prepared once (weight tables / factors) for many activation batches.

    `prepared(a)` == `approx_matmul(a, b, lut, backend=prepared.backend)`, without rebuilding per call.
    Holds `nbytes` of prepared tables; drop the object to free them (no global cache involved).
    """

    k: int

    def apply_all(self, a: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every prepared candidate (one for `prepare_matmul`), int32 [M, N_i] each."""
        check_codes(a, "a", 2)
        if a.shape[1] != self.k:
            raise KernelInputError(
                f"a: expected K = {self.k} columns (b has {self.k} rows), got {a.shape[1]}"
            )
        return [y[0] for y in self.plan.apply(_codes(a).unsqueeze(0))]


def prepare_matmul(b: torch.Tensor, lut, *, backend: str = "auto") -> PreparedMatmul:
    """Prepare weights b [K, N] and a table for repeated `approx_matmul` calls (see PreparedMatmul)."""
    check_backend(backend)
    check_codes(b, "b", 2)
    pairs = _matmul_pairs([(b, lut)], b.device)
    return PreparedMatmul(_MultiPlan(pairs, backend, b.device), b.shape[0])


def prepare_matmul_multi(
    candidates: Sequence[tuple[torch.Tensor, object]], *, backend: str = "auto"
) -> PreparedMatmul:
    """Prepare several (b_i [K, N_i], lut_i) candidates once; `.apply_all(a)` -> [int32 [M, N_i]]."""
    check_backend(backend)
    if len(candidates) == 0:
        raise KernelInputError("candidates: expected at least one (weights, table) pair")
    check_codes(candidates[0][0], "candidates[0].b", 2)
    device = candidates[0][0].device
    pairs = _matmul_pairs(list(candidates), device)
    return PreparedMatmul(_MultiPlan(pairs, backend, device), pairs[0][0].shape[1])


def approx_matmul(a: torch.Tensor, b: torch.Tensor, lut, *, backend: str = "auto") -> torch.Tensor:
    """out[m, n] = Σ_k lut[a[m,k] & 0xFF, b[k,n] & 0xFF] as int32 [M, N] (wrapping like int32 arithmetic).

    a: [M, K] activation codes, b: [K, N] weight codes, each int8 or uint8; lut: int32 [256, 256].
    """
    check_backend(backend)
    check_codes(a, "a", 2)
    check_codes(b, "b", 2)
    check_same_device(("a", a), ("b", b))
    if a.shape[1] != b.shape[0]:
        raise KernelInputError(f"a, b: inner sizes differ, a is {tuple(a.shape)} and b is {tuple(b.shape)}")
    return prepare_matmul(b, lut, backend=backend)(a)


def approx_matmul_multi(
    a: torch.Tensor, candidates: Sequence[tuple[torch.Tensor, object]], *, backend: str = "auto"
) -> list[torch.Tensor]:
    """One activation matrix a [M, K] against several (b_i [K, N_i], lut_i) candidates -> [int32 [M, N_i]].

    Bit-exact equal to [approx_matmul(a, b_i, lut_i) for each i]; shared work (activation indices, one
    embedding_bag pass over concatenated weight tables) is done once.
    """
    check_backend(backend)
    check_codes(a, "a", 2)
    if len(candidates) == 0:
        return []
    pairs = _matmul_pairs(list(candidates), a.device)
    if pairs[0][0].shape[1] != a.shape[1]:
        raise KernelInputError(
            f"a: expected K = {pairs[0][0].shape[1]} columns like the weights, got {a.shape[1]}"
        )
    return [y[0] for y in _MultiPlan(pairs, backend, a.device).apply(_codes(a).unsqueeze(0))]


# ------------------------------------------------------------------------------------------------ conv
@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pad_code: int

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def checked_output_size(self, h: int, w: int) -> tuple[int, int]:
        ho, wo = self.output_size(h, w)
        if ho <= 0 or wo <= 0:
            raise KernelInputError(
                f"x: input {h}x{w} is smaller than the dilated kernel {self.kernel} with padding {self.padding}"
            )
        return ho, wo

    def im2col(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] codes -> A [G, N·L, C/G·kh·kw] uint8 codes (padding = pad_code)."""
        n, c, h, w = x.shape
        ho, wo = self.checked_output_size(h, w)
        xb = _codes(x)
        ph, pw = self.padding
        if ph or pw:
            xb = F.pad(xb, (pw, pw, ph, ph), value=self.pad_code)
        (kh, kw), (sh, sw), (dh, dw), g = self.kernel, self.stride, self.dilation, self.groups
        # one strided copy per kernel tap from a channels-last copy of the bytes: long contiguous runs of
        # C/G codes, 4-5x faster than one copy of a 7-d window view whose innermost run is kw codes
        # (measured: digits conv2 30 -> 6 ms, depthwise 64ch 34 -> 5 ms, 64->64 3x3 8.9 -> 1.6 ms)
        src = xb.reshape(n, g, c // g, xb.shape[2], xb.shape[3]).permute(1, 0, 3, 4, 2).contiguous()
        out = torch.empty(g, n, ho, wo, c // g, kh, kw, dtype=torch.uint8, device=x.device)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                out[:, :, :, :, :, i, j] = src[:, :, rows, cols, :]
        return out.view(g, n * ho * wo, c // g * kh * kw)

    def weights(self, w: torch.Tensor) -> torch.Tensor:
        """w [C_out, C_in/G, kh, kw] codes -> B [G, C_in/G·kh·kw, C_out/G] uint8."""
        g = self.groups
        return _codes(w).reshape(g, w.shape[0] // g, -1).transpose(1, 2).contiguous()


def _conv_geometry(w_shape, x_shape, stride, padding, dilation, groups, pad_code) -> ConvGeometry:
    if not isinstance(groups, int) or groups < 1:
        raise KernelInputError(f"groups: expected a positive int, got {groups!r}")
    c_out, c_per_group, kh, kw = w_shape
    if c_out % groups:
        raise KernelInputError(f"w: C_out = {c_out} is not divisible by groups = {groups}")
    if x_shape is not None and x_shape[1] != c_per_group * groups:
        raise KernelInputError(
            f"x, w: x has {x_shape[1]} channels, but w expects C_in/groups·groups = {c_per_group}·{groups}"
        )
    return ConvGeometry(
        (kh, kw),
        pair(stride, "stride", 1),
        pair(padding, "padding", 0),
        pair(dilation, "dilation", 1),
        groups,
        check_pad_code(pad_code),
    )


def _output(y: torch.Tensor, n: int, ho: int, wo: int) -> torch.Tensor:
    """[G, N·L, C_out/G] -> [N, C_out, Ho, Wo]."""
    g, _, ng = y.shape
    return y.reshape(g, n, ho * wo, ng).permute(1, 0, 3, 2).reshape(n, g * ng, ho, wo).contiguous()


@dataclass
class PreparedConv2d(_Prepared):
    """Conv weights and a table prepared once for many input batches; `prepared(x)` == approx_conv2d(...)."""

    geometry: ConvGeometry
    in_channels: int

    def apply_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_codes(x, "x", 4)
        if x.shape[1] != self.in_channels:
            raise KernelInputError(f"x: expected {self.in_channels} channels, got {x.shape[1]}")
        return self.plan.apply_conv(_codes(x), self.geometry)


def _prepare_conv(candidates, x_shape, device, stride, padding, dilation, groups, pad_code, backend):
    check_backend(backend)
    geometry = None
    pairs = []
    for i, (w, lut) in enumerate(candidates):
        name = "w" if len(candidates) == 1 else f"candidates[{i}].w"
        check_codes(w, name, 4)
        if w.device != device:
            raise KernelInputError(f"{name}: on {w.device}, but x is on {device}; put both on one device")
        geo = _conv_geometry(tuple(w.shape), x_shape, stride, padding, dilation, groups, pad_code)
        if geometry is not None and (geo.kernel, w.shape[1]) != (geometry.kernel, candidates[0][0].shape[1]):
            raise KernelInputError(f"{name}: shape {tuple(w.shape)} differs in C_in/groups or kernel size")
        geometry = geometry or geo
        pairs.append((geometry.weights(w), check_lut(lut, device)))
    in_channels = candidates[0][0].shape[1] * groups
    return PreparedConv2d(_MultiPlan(pairs, backend, device), geometry, in_channels)


def prepare_conv2d(
    w: torch.Tensor,
    lut,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> PreparedConv2d:
    """Prepare conv weights w [C_out, C_in/groups, kh, kw] and a table for repeated approx_conv2d calls."""
    check_codes(w, "w", 4)
    return _prepare_conv([(w, lut)], None, w.device, stride, padding, dilation, groups, pad_code, backend)


def prepare_conv2d_multi(
    candidates: Sequence[tuple[torch.Tensor, object]],
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> PreparedConv2d:
    """Prepare several (w_i, lut_i) conv candidates once; `.apply_all(x)` -> [int32 [N, C_out_i, Ho, Wo]]."""
    if len(candidates) == 0:
        raise KernelInputError("candidates: expected at least one (weights, table) pair")
    check_codes(candidates[0][0], "candidates[0].w", 4)
    device = candidates[0][0].device
    return _prepare_conv(list(candidates), None, device, stride, padding, dilation, groups, pad_code, backend)


def approx_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    lut,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """2-D convolution on 8-bit codes (NCHW) through the table -> int32 [N, C_out, H_out, W_out].

    Padding positions hold `pad_code` (the code of the operand format's real zero, e.g. the zero point).
    """
    check_codes(x, "x", 4)
    check_codes(w, "w", 4)
    plan = _prepare_conv(
        [(w, lut)], tuple(x.shape), x.device, stride, padding, dilation, groups, pad_code, backend
    )
    return plan(x)


def approx_conv2d_multi(
    x: torch.Tensor,
    candidates: Sequence[tuple[torch.Tensor, object]],
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    pad_code: int = 0,
    backend: str = "auto",
) -> list[torch.Tensor]:
    """One input x against several (w_i, lut_i) candidates (same C_in/groups and kernel size; C_out may
    differ) -> [int32 [N, C_out_i, H_out, W_out]], bit-exact equal to separate approx_conv2d calls.
    The im2col and the activation indices are computed once for all candidates."""
    check_codes(x, "x", 4)
    if len(candidates) == 0:
        return []
    plan = _prepare_conv(
        list(candidates), tuple(x.shape), x.device, stride, padding, dilation, groups, pad_code, backend
    )
    return plan.apply_all(x)


def chosen_backends(lut_or_luts, k: int, device: str | torch.device = "cpu") -> list[str]:
    """The backend `backend="auto"` picks for each table at inner size k on `device` (for logs and tests)."""
    luts = lut_or_luts if isinstance(lut_or_luts, (list, tuple)) else [lut_or_luts]
    device = torch.device(device)
    pairs = [(torch.zeros(1, k, 1, dtype=torch.uint8, device=device), check_lut(t, device)) for t in luts]
    out = [""] * len(luts)
    for b, ix in _choose(pairs, "auto", device):
        for i in ix:
            out[i] = b
    return out
