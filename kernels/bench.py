"""`dse bench kernels`: throughput of every backend next to a float32 GEMM / conv of the same shape.

Prints, never asserts. Each backend is timed alternately with its float32 counterpart (best of `reps`
each), so the ratio is measured under the same machine load; the ratio of process CPU times is also given,
which stays meaningful when other processes compete for the cores (it ignores idle waiting).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from dse.kernels import api, bitplane, lowrank
from dse.kernels.dispatch import triton_usable
from dse.kernels.geometry import ConvGeometry
from dse.kernels.prepared import PreparedConv2d, PreparedMatmul
from dse.kernels.reference import approx_conv2d_reference, approx_matmul_reference
from dse.kernels.timing import wall_seconds


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "gemm" | "conv"
    shape: dict[str, Any]  # gemm: m, k, n; conv: x [N,C,H,W], w [Co,Ci/g,kh,kw], padding, groups (stride 1)

    @property
    def macs(self) -> int:
        s = self.shape
        if self.kind == "gemm":
            return int(s["m"] * s["k"] * s["n"])
        n, _, h, w = s["x"]
        co, ci, kh, kw = s["w"]
        ho, wo = ConvGeometry.of(s["w"], padding=s["padding"], groups=s["groups"]).output_size(h, w)
        return int(n * ho * wo * co * ci * kh * kw)


def cases(quick: bool, cuda: bool = False) -> list[Case]:
    """CPU: M=8192 (the CPU target's shape); CUDA: M=65536 (the H100 target's) and 4x the conv batches."""
    b = 16 if quick else (256 if cuda else 64)
    m = 2048 if quick else (65536 if cuda else 8192)
    out = [
        Case(f"gemm {m}x576x64", "gemm", {"m": m, "k": 576, "n": 64}),
        Case(
            "conv3x3 16->16 32x32",
            "conv",
            {"x": [b, 16, 32, 32], "w": [16, 16, 3, 3], "padding": 1, "groups": 1},
        ),
        Case(
            "conv3x3 64->64 8x8", "conv", {"x": [b, 64, 8, 8], "w": [64, 64, 3, 3], "padding": 1, "groups": 1}
        ),
        Case(
            "depthwise3x3 64 32x32",
            "conv",
            {"x": [b // 4, 64, 32, 32], "w": [64, 1, 3, 3], "padding": 1, "groups": 64},
        ),
    ]
    if not quick:  # the deepest ResNet K (512 channels, 3x3); N kept small so the weight table is kept
        out.append(Case("gemm 1024x4608x32", "gemm", {"m": 1024, "k": 4608, "n": 32}))
    return out


def tables() -> dict[str, torch.Tensor]:
    """A full-rank table (exact unsigned product plus random error, like an evolved multiplier) and a
    rank-<=8 one (the unsigned multiplier with partial-product columns below 2^8 truncated)."""
    v = torch.arange(256, dtype=torch.int64)
    exact = v[:, None] * v[None, :]
    g = torch.Generator().manual_seed(0)
    evolved = exact + torch.randint(-300, 301, (256, 256), generator=g)
    bits_a = (v[:, None] >> torch.arange(8)) & 1  # [256, 8]
    bits_b = (v[:, None] >> torch.arange(8)) & 1
    weight = 2 ** (torch.arange(8)[:, None] + torch.arange(8)[None, :])
    weight = weight * ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) >= 8)
    truncated = bits_a @ weight @ bits_b.t()
    return {"full-rank": evolved.to(torch.int32), "rank<=8 (col-trunc 8)": truncated.to(torch.int32)}


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs"


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is robust to other processes on the machine."""
    c = time.process_time()
    wall = wall_seconds(fn, device)
    return wall, time.process_time() - c


def _race(
    fn: Callable[[], object], base: Callable[[], object], device: torch.device, reps: int
) -> tuple[float, float, float, float]:
    """Best (wall, cpu) times of fn and of base, measured alternately (same load for both)."""
    fn()
    base()
    best = [float("inf")] * 4
    for _ in range(reps):
        w, c = _timed(fn, device)
        wb, cb = _timed(base, device)
        best = [min(x, y) for x, y in zip(best, (w, c, wb, cb))]
    return best[0], best[1], best[2], best[3]


def _operands(case: Case, device: torch.device, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    def codes(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.int64).to(torch.uint8).to(device)

    if case.kind == "gemm":
        s = case.shape
        return codes((s["m"], s["k"])), codes((s["k"], s["n"]))
    return codes(tuple(case.shape["x"])), codes(tuple(case.shape["w"]))


@dataclass(frozen=True)
class _Ops:
    """What one case times: the float32 baseline, a backend's prepared weights, a one-off call, and the
    reference on a share of the rows (the whole of it would take minutes)."""

    base: Callable[[], object]
    prepare: Callable[[torch.Tensor, str], PreparedMatmul | PreparedConv2d]
    cold: Callable[[torch.Tensor, str], torch.Tensor]
    reference: Callable[[torch.Tensor], torch.Tensor]
    ref_share: float


def _gemm_ops(a: torch.Tensor, b: torch.Tensor) -> _Ops:
    af, bf = a.float(), b.float()
    sub = a[:64]
    return _Ops(
        base=lambda: af @ bf,
        prepare=lambda lut, backend: api.prepare_matmul(b, lut, backend=backend),
        cold=lambda lut, backend: api.approx_matmul(a, b, lut, backend=backend),
        reference=lambda lut: approx_matmul_reference(sub, b, lut),
        ref_share=sub.shape[0] / a.shape[0],
    )


def _conv_ops(a: torch.Tensor, b: torch.Tensor, pad: int, groups: int) -> _Ops:
    af, bf = a.float(), b.float()
    sub = a[:1]
    return _Ops(
        base=lambda: F.conv2d(af, bf, padding=pad, groups=groups),
        prepare=lambda lut, backend: api.prepare_conv2d(b, lut, 1, pad, 1, groups, backend=backend),
        cold=lambda lut, backend: api.approx_conv2d(a, b, lut, 1, pad, 1, groups, backend=backend),
        reference=lambda lut: approx_conv2d_reference(sub, b, lut, 1, pad, 1, groups),
        ref_share=1 / a.shape[0],
    )


def bench_kernels(
    device: str | torch.device = "cpu", quick: bool = False, reps: int | None = None
) -> dict[str, Any]:
    """Run the benchmark; returns {"hardware", "device", "rows": [...]} (what `--json` prints)."""
    device = torch.device(device)
    reps = reps or 3
    g = torch.Generator().manual_seed(0)
    rows = []
    shapes = cases(quick, device.type == "cuda")
    for case in shapes:
        a, b = _operands(case, device, g)
        if case.kind == "gemm":
            ops = _gemm_ops(a, b)
        else:
            ops = _conv_ops(a, b, case.shape["padding"], case.shape["groups"])
        base, ref_share = ops.base, ops.ref_share
        for table_name, lut in tables().items():
            lut = lut.to(device)
            factors = lowrank.lowrank_factors(lut)
            planes = bitplane.bitplane_planes(lut)
            backends = ["reference", "cpu", "lowrank", "bitplane", "triton", "auto"]
            for backend in backends:
                if backend == "lowrank" and (factors is None or factors.rank > lowrank.MAX_RANK):
                    continue
                if backend == "bitplane" and (
                    planes is None
                    or not bitplane.available(device)
                    or case.kind == "conv"
                    and case.shape["groups"] > 1
                ):
                    continue
                if backend == "triton" and not (device.type == "cuda" and triton_usable(device)):
                    continue
                if backend == "reference":
                    if device.type == "cuda":
                        continue
                    t_fn, c_fn, t_base, c_base = _race(partial(ops.reference, lut), base, device, 1)
                    t_fn, c_fn = t_fn / ref_share, c_fn / ref_share
                    note = f"timed on {ref_share:.3g} of the rows"
                else:
                    p = ops.prepare(lut, backend)
                    t_fn, c_fn, t_base, c_base = _race(partial(p, a), base, device, reps)
                    note = f"prepared weights ({p.nbytes / 2**20:.0f} MiB), backend {p.backend}"
                    if backend in ("cpu", "auto"):
                        t_cold, *_ = _race(partial(ops.cold, lut, backend), base, device, 1)
                        note += f"; {case.macs / t_cold / 1e9:.2f} G/s including preparation"
                rows.append(
                    {
                        "case": case.name,
                        "kind": case.kind,
                        "macs": case.macs,
                        "table": table_name,
                        "rank": factors.rank if factors is not None else None,
                        "planes": len(planes.planes) if planes is not None else None,
                        "backend": backend,
                        "g_lut_mac_per_s": case.macs / t_fn / 1e9,
                        "float32_g_mac_per_s": case.macs / t_base / 1e9,
                        "ratio_to_float32": t_base / t_fn,
                        "g_lut_mac_per_cpu_s": case.macs / max(c_fn, 1e-9) / 1e9,
                        "ratio_to_float32_cpu_time": c_base / max(c_fn, 1e-9),
                        "note": note,
                    }
                )
    return {
        "hardware": hardware(device),
        "device": str(device),
        "torch": torch.__version__,
        "quick": quick,
        "cases": [asdict(c) | {"macs": c.macs} for c in shapes],
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"hardware: {result['hardware']}  (torch {result['torch']}, device {result['device']})",
        "G/s = G LUT-MAC/s (wall clock); ratio = float32 time / kernel time, wall clock and process CPU time",
        f"{'case':22} {'table':21} {'rank':>4} {'backend':9} {'G/s':>7} {'fp32 G/s':>8} {'ratio':>6} "
        f"{'cpu-t':>6}  note",
    ]
    for r in result["rows"]:
        rank = "-" if r["rank"] is None else str(r["rank"])
        lines.append(
            f"{r['case']:22} {r['table']:21} {rank:>4} {r['backend']:9} {r['g_lut_mac_per_s']:7.2f} "
            f"{r['float32_g_mac_per_s']:8.2f} {r['ratio_to_float32']:6.3f} {r['ratio_to_float32_cpu_time']:6.3f}"
            f"  {r['note']}"
        )
    return "\n".join(lines)
