"""Which backend runs each (weights, table) candidate: the user's choice, checked, or `auto`'s measured race.

Every backend is bit-exact, so the choice changes speed, never results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import torch
from dse.kernels import bitplane, cpu, lowrank
from dse.kernels.checks import KernelInputError, Table, check_lut
from dse.kernels.plans import Pair, make_plan
from dse.kernels.timing import wall_seconds

# Dispatcher thresholds (measured with `dse bench kernels`, see docs/ARCHITECTURE.md "dse.kernels").
CPU_LOWRANK_MAX_COST = 3.0  # lowrank enters the CPU race when rank·(2 if float64 else 1) <= this (rank 3
# ties with cpu at M=4096 K=576 N=64, one core: 0.24x vs 0.24x float32; higher ranks never won)
CUDA_LOWRANK_MAX_COST = 2.0  # H100: lowrank at rank 7 ran 40-57 G/s against triton's 2.9-3.4 T; ranks <= 2
# (exact products) were not timed apart: the race decides
# below this K the plane transform dominates: bitplane never won (0.2-0.5x cpu at K <= 25)
BITPLANE_MIN_K = 32

# the order in which a multi-candidate plan runs its backends' parts
AUTO_ORDER = ("bitplane", "lowrank", "triton", "cpu")


def triton_installed() -> bool:
    """The triton package imports here (it is a dependency on Linux only)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_usable(device: torch.device) -> bool:
    """Triton can run here: CUDA tensors with triton installed, or TRITON_INTERPRET=1 (CPU, for tests)."""
    if not triton_installed():
        return False
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1" and device.type == "cpu"


def choose(
    pairs: Sequence[Pair], backend: str, device: torch.device, conv: bool = False
) -> list[tuple[str, list[int]]]:
    """Backend per candidate: [(backend, candidate indices)], candidates sharing a backend kept together.

    An explicit backend must run every candidate (else KernelInputError saying why); "auto" picks per
    candidate (`auto_backend`; `conv`: the pairs are a convolution's, whose plans may skip im2col)."""
    if backend == "triton" and not triton_usable(device):
        raise KernelInputError(
            "backend='triton': needs CUDA tensors and the triton package (or TRITON_INTERPRET=1 on CPU for "
            f"tests); got {device} tensors" + ("" if triton_installed() else " and triton is not installed")
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
        chosen.setdefault(auto_backend(lut, k, b.shape[2], groups, device, conv), []).append(i)
    return [(b, chosen[b]) for b in AUTO_ORDER if b in chosen]


def auto_backend(
    lut: torch.Tensor, k: int, n: int, groups: int, device: torch.device, conv: bool = False
) -> str:
    """Backend for one table: the fastest, by a measured race, of the backends that can run it here —
    CPU: cpu, lowrank (rank·dtype cost <= CPU_LOWRANK_MAX_COST), bitplane (oneDNN int8 GEMMs);
    CUDA: triton, lowrank (cost <= CUDA_LOWRANK_MAX_COST).
    bitplane needs a partial-product table, G = 1 and K >= BITPLANE_MIN_K. A convolution (`conv`) that
    bitplane can run takes it without a race: its int8 convolutions on x's planes skip im2col, and won
    every shape of the ResNet-20 study (1 thread, 250 28x28 images, 16->16 3x3: 0.02-0.06 s against cpu
    0.12-0.16 s and lowrank 0.08-0.28 s; 64->64 on 7x7: 6-14 ms against 62-80 ms and 25-116 ms); else a
    convolution that lowrank can run in float32 (G = 1, K >= BITPLANE_MIN_K) takes lowrank's float32
    convolutions, also without a race."""
    cuda = device.type == "cuda"
    default = "triton" if cuda and triton_usable(device) else "cpu"
    options: dict[str, float] = {default: 0}
    f = lowrank.lowrank_factors(lut)
    if f is not None and f.cost(k) <= (CUDA_LOWRANK_MAX_COST if cuda else CPU_LOWRANK_MAX_COST):
        options["lowrank"] = f.cost(k)
    if groups == 1 and k >= BITPLANE_MIN_K and bitplane.available(device):
        p = bitplane.bitplane_planes(lut)
        if p is not None:
            if conv and bitplane.conv_available():
                return "bitplane"
            options["bitplane"] = len(p.planes)
    if conv and not cuda and groups == 1 and k >= BITPLANE_MIN_K and f is not None and "lowrank" in options:
        if f.float_plan(k)[0] == torch.float32:  # float32 convolutions of U_j[x], no im2col (measured:
            return "lowrank"  # DRUM-k 16->16 3x3 on 28x28: 0.06-0.07 s against cpu's 0.31-0.34 s)
    if not cuda and len(options) > 1 and groups * k * 256 * n * 4 > cpu.KEEP_TABLE_BYTES:
        # the cpu backend's weight tables would be rebuilt on every call: never the fastest, slow to race
        del options["cpu"]
    if len(options) == 1:
        return next(iter(options))
    return _fastest(lut, k, n, groups, options, device)


# (device, K, N, G, options, torch threads) -> the winner of that race, for the life of the process
_RACES: dict[tuple[object, ...], str] = {}


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
            plan = make_plan(backend, pairs)
            plan.apply(a)
            times[backend] = min(wall_seconds(partial(plan.apply, a), device) for _ in range(2))
        _RACES[key] = min(times, key=times.__getitem__)
    return _RACES[key]


def chosen_backends(
    lut_or_luts: Table | Sequence[Table], k: int, device: str | torch.device = "cpu"
) -> list[str]:
    """The backend `backend="auto"` picks for each table at inner size k on `device` (for logs and tests)."""
    luts = list(lut_or_luts) if isinstance(lut_or_luts, (list, tuple)) else [lut_or_luts]
    dev = torch.device(device)
    pairs = [(torch.zeros(1, k, 1, dtype=torch.uint8, device=dev), check_lut(t, dev)) for t in luts]
    out = [""] * len(luts)
    for b, ix in choose(pairs, "auto", dev):
        for i in ix:
            out[i] = b
    return out
