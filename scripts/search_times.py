"""Every stage's seconds and the headline figures of a finished `dse search` run, as one JSON document
(a developer's tool: scripts/gpu_check.sh's `search` step writes it for the GPU figures).

    python scripts/search_times.py RUN_DIR [WALL_SECONDS]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HEADLINE = (
    "quant_accuracy",
    "quant_test_accuracy",
    "evaluations",
    "budget",
    "seconds",
    "simulations_per_second",
    "hypervolume",
    "surrogate_kendall_tau",
    "simulated_images",
    "simulated_images_per_front_point",
    "rejected_early",
)


def search_times(run_dir: Path, wall_seconds: float | None) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    prepare = json.loads((run_dir / "prepare" / "result.json").read_text())
    out: dict[str, Any] = {"run_dir": str(run_dir), "wall_seconds": wall_seconds}
    out["stage_seconds"] = summary.get("stage_seconds", {})
    out["prepare"] = {k: v for k, v in prepare.items() if "accuracy" in k or "seconds" in k}
    out.update({k: summary.get(k) for k in HEADLINE})
    out["random_with_seeds_hypervolume"] = (
        summary.get("baselines", {}).get("random_with_seeds", {}).get("hypervolume")
    )
    out["targets"] = summary.get("targets", {})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("wall_seconds", nargs="?", type=float, default=None)
    args = ap.parse_args()
    print(json.dumps(search_times(args.run_dir, args.wall_seconds), indent=1))


if __name__ == "__main__":
    main()
