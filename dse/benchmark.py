"""`dse bench model`: a whole network's forward in approximate (table) mode next to the same forward in
exactly-quantized mode, measured alternately in one run (the product's speed target: "ResNet-20
approximate forward <= 3x the quantized forward"; the closest peer costs 7.3x on ResNet-18).

The network has random weights (speed does not depend on training), BatchNorm folded and calibrated on
random inputs; every approximable layer gets the same multiplier. Prints, never asserts.
"""

from __future__ import annotations

import torch

from dse.kernels.bench import hardware
from dse.kernels.timing import wall_seconds

DEFAULT_MULTIPLIERS = ("exact_u8", "bam_h3_v9_u8", "trunc8_u8", "drum4_u8", "mitchell_u8")
INPUT_SHAPES = {"digits_cnn": (1, 8, 8), "lenet5": (1, 28, 28)}  # others: CIFAR-like 3x32x32


def bench_model(
    model_name: str = "resnet20",
    multipliers: tuple[str, ...] = DEFAULT_MULTIPLIERS,
    batch: int = 256,
    device: str | torch.device = "cpu",
    reps: int = 3,
) -> dict:
    """{"hardware", "model", "batch", "quant_seconds", "rows": [{multiplier, backends, seconds, ratio}]}."""
    from dse.models import build_model, fold_batchnorm
    from dse.multipliers.library import load_library
    from dse.nn import approx_layers, assign, calibrate, convert, set_mode
    from dse.quant import QuantFormat
    from dse.util import UserError, progress

    device = torch.device(device)
    lib = {m.name: m for m in load_library()}
    unknown = [m for m in multipliers if m not in lib]
    if unknown:
        raise UserError(
            f"--multiplier: unknown multiplier(s) {', '.join(unknown)} (see `dse multipliers list`)"
        )
    fmt = QuantFormat.from_names("unsigned", "sign-magnitude")
    if any(lib[m].signed for m in multipliers):
        raise UserError("--multiplier: the model bench uses unsigned activations; pick *_u8 multipliers")
    torch.manual_seed(0)
    shape = INPUT_SHAPES.get(model_name, (3, 32, 32))
    model = build_model(model_name, input_shape=shape).eval()
    fold_batchnorm(model)
    model = convert(model, fmt).to(device)
    x = torch.randn(batch, *shape, device=device)
    calibrate(model, [x])
    set_mode(model, "quant")
    layers = approx_layers(model)

    def forward():
        with torch.no_grad():
            model(x)

    forward()
    rows = []
    best_quant = float("inf")
    bar = progress(multipliers, desc=f"bench {model_name}")
    for name in bar:
        assign(model, {n: lib[name] for n in layers})
        set_mode(model, "lut")
        forward()  # prepares the layers' kernels (weights, tables, backend races) once
        backends = sorted({b for layer in layers.values() for b in layer.kernel_backends()})
        best = float("inf")
        for _ in range(reps):
            set_mode(model, "lut")
            best = min(best, wall_seconds(forward, device))
            set_mode(model, "quant")
            best_quant = min(best_quant, wall_seconds(forward, device))
        rows.append({"multiplier": name, "backends": backends, "seconds": best})
        bar.set_postfix_str(f"{name} {best * 1e3:.0f} ms (quantized {best_quant * 1e3:.0f} ms)")
    # the float network (cuDNN / oneDNN, no quantization, no exactness constraint): the fastest forward
    # there is, for scale — the exactly-quantized forward keeps integer sums exact (on CUDA it turns cuDNN
    # off, whose Winograd/FFT algorithms are not), which costs it dearly there
    set_mode(model, "float")
    forward()
    best_float = min(wall_seconds(forward, device) for _ in range(reps))
    for r in rows:
        r["ratio_to_quant"] = r["seconds"] / best_quant
        r["ratio_to_float"] = r["seconds"] / best_float
    macs = sum(layer.macs or 0 for layer in layers.values())
    return {
        "hardware": hardware(device),
        "device": str(device),
        "torch": torch.__version__,
        "model": model_name,
        "batch": batch,
        "macs_per_sample": macs,
        "quant_seconds": best_quant,
        "float_seconds": best_float,
        "rows": rows,
    }


def format_model_table(result: dict) -> str:
    lines = [
        f"hardware: {result['hardware']}  (torch {result['torch']}, device {result['device']})",
        f"{result['model']}, batch {result['batch']}: exactly-quantized forward {result['quant_seconds'] * 1e3:.1f} ms, "
        f"float forward {result['float_seconds'] * 1e3:.1f} ms",
        f"{'multiplier':16} {'forward ms':>10} {'x quant':>8} {'x float':>8}  backends",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['multiplier']:16} {r['seconds'] * 1e3:10.1f} {r['ratio_to_quant']:8.2f} {r['ratio_to_float']:8.2f}  "
            f"{', '.join(r['backends'])}"
        )
    return "\n".join(lines)
