"""Benchmark of the free remedies (bias compensation, ALWANN weight tuning; dse.nn.compensation).

    python scripts/bias_compensation.py distortion RUN [RUN ...] [--images 500] [--json OUT]
    python scripts/bias_compensation.py search RUN WORKDIR [--budget 48] [--arms false,true] [--json OUT]

`distortion`: for every biased multiplier of the run's space (truncated `trunc*`, broken-array `bam_*`),
the measured layer-output distortion ‖ΔY‖_F/‖Y‖_F of every layer on validation images (exact inputs, the
`dse analyze` measurement), without a remedy, with bias compensation and with weight tuning (both
computed from the training split's calibration images, disjoint from the validation images); prints per
multiplier the median over layers of plain / remedied distortion and the medians over multipliers.

`search`: copies the prepared run once per arm (`cp -r`, the original is never modified), sets
`[search] compensate_bias` (arms: false, true, search; "tune" = weight_tuning on, no compensation),
`budget`, `random_baseline = false`, runs `dse search` and prints the summary's
`targets.best_saving_within_1pp_test` and `best_homogeneous_saving_within_1pp_test` side by side.
Numbers are measured on whatever machine runs it (the commit messages say which).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def distortion(runs: list[str], images: int) -> dict[str, object]:
    from dse.errors.analyze import measure_layers
    from dse.errors.profiles import calibration_images
    from dse.prepare import load_prepared

    out: dict[str, object] = {}
    for run in runs:
        prepared = load_prepared(Path(run))
        mults = [m for m in prepared.space if m.name.startswith(("trunc", "bam_"))]
        x = calibration_images(prepared.splits.val, images, seed=1)
        t0 = time.perf_counter()
        meas = measure_layers(prepared, mults, x, remedies=True)
        seconds = time.perf_counter() - t0
        assert meas.distortion_compensated is not None and meas.distortion_tuned is not None
        rows = {}
        for mi, m in enumerate(mults):
            d = meas.distortion[:, mi]
            rows[m.name] = {
                "plain": d.tolist(),
                "compensated_ratio": float(np.median(d / meas.distortion_compensated[:, mi])),
                "tuned_ratio": float(np.median(d / meas.distortion_tuned[:, mi])),
            }
        comp = [r["compensated_ratio"] for r in rows.values()]
        tuned = [r["tuned_ratio"] for r in rows.values()]
        fmt = prepared.fmt
        out[run] = {
            "format": f"{fmt.format}/{fmt.weight_scheme}",
            "layers": meas.layers,
            "images": int(x.shape[0]),
            "seconds": seconds,
            "multipliers": rows,
            "median_compensated_ratio": float(np.median(comp)),
            "median_tuned_ratio": float(np.median(tuned)),
            "min_compensated_ratio": float(np.min(comp)),
        }
        print(f"{run} ({fmt.format}/{fmt.weight_scheme}), {x.shape[0]} validation images, {seconds:.1f} s")
        print(
            f"  {'multiplier':<16} {'plain/comp':>10} {'plain/tuned':>11}   (median over {len(meas.layers)} layers)"
        )
        for name, r in rows.items():
            print(f"  {name:<16} {r['compensated_ratio']:>10.2f} {r['tuned_ratio']:>11.2f}")
        print(
            f"  median over multipliers: compensation {np.median(comp):.2f}x, weight tuning {np.median(tuned):.2f}x"
        )
    return out


def _set_search(toml: Path, values: dict[str, str]) -> None:
    text = toml.read_text()
    head, sep, rest = text.partition("[search]\n")
    if not sep:
        text, rest = text + "\n[search]\n", ""
        head, sep = text[: -len("[search]\n")], "[search]\n"
    for key, value in values.items():
        pattern = re.compile(rf"^{key} = .*$", re.M)
        section, nxt, tail = rest.partition("\n[")
        if pattern.search(section):
            section = pattern.sub(f"{key} = {value}", section)
        else:
            section = section.rstrip("\n") + f"\n{key} = {value}\n"
        rest = section + nxt + tail
    toml.write_text(head + sep + rest)


def search(run: str, workdir: str, budget: int, arms: list[str]) -> dict[str, object]:
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, object] = {}
    for arm in arms:
        target = work / f"arm_{arm}"
        if not (target / "summary.json").exists():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(run, target)
            for stale in ("search", "summary.json", "report.html", "configs"):
                p = target / stale
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            comp = {"false": "false", "true": "true", "search": '"search"', "tune": "false"}[arm]
            _set_search(
                target / "study.toml",
                {
                    "compensate_bias": comp,
                    "weight_tuning": "true" if arm == "tune" else "false",
                    "budget": str(budget),
                    "random_baseline": "false",
                },
            )
            t0 = time.perf_counter()
            subprocess.run(
                ["dse", "search", str(target), "--no-report", "--json"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            print(f"arm {arm}: search {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        summary = json.loads((target / "summary.json").read_text())
        t = summary["targets"]
        out[arm] = {
            "best_saving_within_1pp_test": t["best_saving_within_1pp_test"],
            "best_saving_within_1pp": t["best_saving_within_1pp"],
            "best_homogeneous_saving_within_1pp_test": t["best_homogeneous_saving_within_1pp_test"],
            "evaluations": summary["evaluations"],
            "seconds": summary["seconds"],
            "quant_test_accuracy": summary["quant_test_accuracy"],
        }
    print(f"{'arm':<8} {'best_1pp_test':>13} {'best_1pp_val':>12} {'homog_1pp_test':>14} {'evals':>6}")
    for arm, r in out.items():
        assert isinstance(r, dict)
        print(
            f"{arm:<8} {r['best_saving_within_1pp_test']:>13.4f} {r['best_saving_within_1pp']:>12.4f} "
            f"{r['best_homogeneous_saving_within_1pp_test']:>14.4f} {r['evaluations']:>6}"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("distortion")
    d.add_argument("runs", nargs="+")
    d.add_argument("--images", type=int, default=500)
    d.add_argument("--json")
    s = sub.add_parser("search")
    s.add_argument("run")
    s.add_argument("workdir")
    s.add_argument("--budget", type=int, default=48)
    s.add_argument("--arms", default="false,true")
    s.add_argument("--json")
    args = ap.parse_args()
    from dse.util import set_threads

    set_threads()
    if args.cmd == "distortion":
        result = distortion(args.runs, args.images)
    else:
        result = search(args.run, args.workdir, args.budget, args.arms.split(","))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
