"""Where a model forward in table mode spends its time (a developer's tool): torch.profiler over a few
forwards of `dse bench model`'s network, the top operators by device time (CUDA) or CPU time (--device
cpu, with each layer's kernel backend: that is how the fashion_resnet20 candidate's 15 s were found to be
im2col copies and plane transforms of the 16-channel 28x28 layers).

    python scripts/profile_model.py [--model resnet20] [--multiplier drum4_u8] [--batch 1024] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from dse.models import build_model, fold_batchnorm
from dse.multipliers.library import load_library
from dse.nn import approx_layers, assign, calibrate, convert, set_mode
from dse.quant import QuantFormat
from dse.util import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--multiplier", default="drum4_u8")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shape", default="3,32,32", help="input C,H,W (fashion_resnet20: 1,28,28)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    set_threads(None)  # dse's thread count (1 on <= 2 cores): what a search runs with
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    model = build_model(args.model, input_shape=shape).eval()
    fold_batchnorm(model)
    model = convert(model, QuantFormat.from_names("unsigned", "sign-magnitude")).to(dev)
    x = torch.rand(args.batch, *shape, device=dev)
    calibrate(model, [x])
    layers = approx_layers(model)
    assign(model, {n: load_library().get(args.multiplier) for n in layers})
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for mode in ("quant", "lut"):
        set_mode(model, mode)
        with torch.no_grad():
            model(x)
            model(x)
            if cuda:
                torch.cuda.synchronize()
            with profile(activities=activities) as prof:
                for _ in range(3):
                    model(x)
                if cuda:
                    torch.cuda.synchronize()
        print(f"=== {mode} mode, {args.model} batch {args.batch}, 3 forwards on {dev}")
        if mode == "lut":
            print("backends:", {n: layer.kernel_backends() for n, layer in layers.items()})
        sort = "cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
