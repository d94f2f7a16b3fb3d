"""Where a model forward in table mode spends its GPU time (a developer's tool): torch.profiler over a few
forwards of `dse bench model`'s network, the top operators by device time.

    python scripts/profile_model.py [--model resnet20] [--multiplier drum4_u8] [--batch 1024]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from dse.models import build_model, fold_batchnorm
from dse.multipliers.library import load_library
from dse.nn import approx_layers, assign, calibrate, convert, set_mode
from dse.quant import QuantFormat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--multiplier", default="drum4_u8")
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(args.model, input_shape=(3, 32, 32)).eval()
    fold_batchnorm(model)
    model = convert(model, QuantFormat.from_names("unsigned", "sign-magnitude")).to(dev)
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    calibrate(model, [x])
    layers = approx_layers(model)
    assign(model, {n: load_library().get(args.multiplier) for n in layers})
    for mode in ("quant", "lut"):
        set_mode(model, mode)
        with torch.no_grad():
            model(x)
            model(x)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    model(x)
                torch.cuda.synchronize()
        print(f"=== {mode} mode, {args.model} batch {args.batch}, 3 forwards")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
