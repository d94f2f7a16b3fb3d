"""Tile sweep of the Triton table-lookup GEMM kernel on a CUDA GPU (a developer's tool, not part of the package).

For each shape (the issue's M=65536 K=576 N=64 GEMM and the GEMMs a ResNet-20 forward at batch 1024 runs),
each table format (int16 residuals, int32 entries) and each tile configuration: checks the output against
the int64 brute force on a sample of rows, then times it (median of triton.testing.do_bench) next to a
float32 GEMM of the same shape. Prints a table, best configuration per (shape, format) last.

    python scripts/triton_sweep.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch
import triton
from dse.kernels.bench import tables
from dse.kernels.triton_common import Config, default_config
from dse.kernels.triton_gemm import triton_lut_matmul
from dse.kernels.triton_tables import build_triton_tables
from triton.testing import do_bench

SHAPES = [  # (name, M, K, N)
    ("issue 65536x576x64", 65536, 576, 64),
    ("r20 stage1 1M x144x16", 1024 * 32 * 32, 144, 16),
    ("r20 stage2 256K x288x32", 1024 * 16 * 16, 288, 32),
    ("r20 stage3 64K x576x64", 1024 * 8 * 8, 576, 64),
    ("r20 conv1 1M x27x16", 1024 * 32 * 32, 27, 16),
    ("deep 1024x4608x32", 1024, 4608, 32),
]


def reference_rows(a: torch.Tensor, b: torch.Tensor, lut: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """int64 brute force of the sampled rows, wrapped to int32."""
    sub = a[rows].long()  # [R, K]
    vals = lut.long()[sub[:, :, None], b.long()[None, :, :]]  # [R, K, N]
    s = vals.sum(1)
    return ((s + 2**31) % 2**32 - 2**31).to(torch.int32)


def configs(quick: bool, m: int, n: int):
    bms = (64, 128, 256) if quick else (32, 64, 128, 256, 512)
    bns = sorted({min(max(16, triton.next_power_of_2(n)), x) for x in (16, 32, 64)})
    warps = (2, 4, 8)
    unrolls = (1, 2) if quick else (1, 2, 4)
    for bm, bn, w, u, km in itertools.product(bms, bns, warps, unrolls, (False, True)):
        per_thread = bm * bn // (32 * w)
        if per_thread > 128 or per_thread < 4:  # spills / idle threads
            continue
        for split in (1, 8, 32) if m <= 8192 else (1,):
            yield Config(bm, bn, w, u, km, split)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=None, help="comma-separated indices into SHAPES")
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}  torch {torch.__version__}  triton {triton.__version__}")
    g = torch.Generator(device="cpu").manual_seed(0)
    full = tables()["full-rank"].to(dev)
    rnd = torch.randint(-(2**20), 2**20, (256, 256), generator=g, dtype=torch.int32).to(dev)  # int32 path
    rows_out = []
    shapes = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(",")]
    for name, m, k, n in shapes:
        a = torch.randint(0, 256, (m, k), generator=g).to(torch.uint8).to(dev)
        a_km = a.t().contiguous().t()  # the same codes stored k-major (as im2col could write them)
        b = torch.randint(0, 256, (k, n), generator=g).to(torch.uint8).to(dev)
        af, bf = a.float(), b.float()
        t_fp32 = 1e-3 * do_bench(lambda af=af, bf=bf: af @ bf, warmup=25, rep=100, return_mode="median")
        sample = torch.randint(0, m, (256,), generator=g).to(dev)
        macs = m * k * n
        print(f"\n{name}: float32 {macs / t_fp32 / 1e9:.0f} G MAC/s ({t_fp32 * 1e6:.0f} us)")
        for fmt, lut in (("int16-residual", full), ("int32", rnd))[: 2 if k == 576 else 1]:
            tb = build_triton_tables([(b[None], lut)])
            assert (tb.c is not None) == (fmt == "int16-residual"), fmt
            ref = reference_rows(a, b, lut, sample)
            best = None
            cfgs = list(configs(args.quick, m, n)) + [default_config(m, n, k, 1, dev)]
            for cfg in cfgs:
                src = a_km if cfg.k_major else a  # k-major timed without the transposing copy
                try:
                    out = triton_lut_matmul(src[None], tb, cfg)[0]
                    ok = torch.equal(out[sample], ref)
                    t = 1e-3 * do_bench(
                        lambda cfg=cfg, a=src, tb=tb: triton_lut_matmul(a[None], tb, cfg),
                        warmup=10,
                        rep=50,
                        return_mode="median",
                    )
                except Exception as e:  # a configuration that does not compile: report, go on
                    print(f"  {fmt:15} {cfg}  FAILED {type(e).__name__}: {str(e)[:120]}")
                    continue
                rate = macs / t / 1e9
                row = {
                    "shape": name,
                    "m": m,
                    "k": k,
                    "n": n,
                    "format": fmt,
                    "config": cfg.__dict__,
                    "exact": ok,
                    "seconds": t,
                    "g_lut_mac_per_s": rate,
                    "ratio_fp32": t_fp32 / t,
                    "default": cfg == cfgs[-1],
                }
                rows_out.append(row)
                print(
                    f"  {fmt:15} bm={cfg.block_m:4} bn={cfg.block_n:3} w={cfg.num_warps} u={cfg.unroll} "
                    f"kmaj={int(cfg.k_major)} s={cfg.split_k:2}  {t * 1e6:8.1f} us  {rate:8.0f} G/s  x{t_fp32 / t:.3f} fp32"
                    f"  {'exact' if ok else 'WRONG'}{'  (default)' if row['default'] else ''}"
                )
                if ok and (best is None or t < best[0]):
                    best = (t, cfg)
            if best:
                print(f"  BEST {fmt}: {best[1]} {macs / best[0] / 1e9:.0f} G/s")
        del a, a_km, b, af, bf
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows_out, f, indent=1)
    wrong = [r for r in rows_out if not r["exact"]]
    print(f"\n{len(rows_out)} runs, {len(wrong)} inexact")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
