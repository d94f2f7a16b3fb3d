"""Candidates per second of a prepared run's full behavioural simulation (a developer's tool): random
assignments from the run's search space, each simulated on the whole validation split through
`simulate_accuracy` (no early rejection, no prefix cache), wall clock and process CPU time.

    python scripts/candidate_rate.py RUN_DIR [N] [--threads T]     # e.g. runs/fashion_resnet20 3
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from dse.prepare import load_prepared
from dse.simulation import simulate_accuracy
from dse.util import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("n", nargs="?", type=int, default=3, help="candidates (default 3)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: dse's, 1 on <= 2 cores)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_threads(args.threads)
    prepared = load_prepared(args.run_dir, device="cpu")
    allowed = prepared.layer_space
    rng = random.Random(args.seed)
    wall, cpu, accuracy = [], [], []
    for _ in range(args.n):
        assignment = {name: rng.choice(options) for name, options in allowed.items()}
        t, c = time.perf_counter(), time.process_time()
        accuracy.append(simulate_accuracy(prepared, assignment))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    print(
        json.dumps(
            {
                "val_images": len(prepared.splits.val),
                "threads": torch.get_num_threads(),
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "candidates_per_second": args.n / sum(wall),
                "candidates_per_cpu_second": args.n / sum(cpu),
                "accuracy": accuracy,
            }
        )
    )


if __name__ == "__main__":
    main()
