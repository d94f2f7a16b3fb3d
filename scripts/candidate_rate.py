"""Candidates per second of a prepared run's behavioural simulation (a developer's tool): random
assignments from the run's search space on the whole validation split, wall clock and process CPU time.

- `full`: each candidate complete, through the search's simulator (`ModelSimulator`, prefix cache off);
- `--staged`: as the search scores them: the all-exact network first (the front), then every random
  candidate with the search's early rejection against the front of those simulated before it
  (`SimulationCache.evaluate_staged`, prefix cache on); rejected candidates cost their slice.

    python scripts/candidate_rate.py RUN_DIR [N] [--staged] [--threads T]   # e.g. runs/fashion_resnet20 3
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from dse.prepare import load_prepared
from dse.search.accurate import front_threshold
from dse.search.model_sim import ModelSimulator
from dse.search.setup import build_problem
from dse.search.simulate import SimulationCache, Staged
from dse.util import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("n", nargs="?", type=int, default=3, help="candidates (default 3)")
    ap.add_argument("--staged", action="store_true", help="with the search's early rejection")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: dse's, one per core)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_threads(args.threads)
    prepared = load_prepared(args.run_dir, device="cpu")
    problem, mults = build_problem(prepared)
    sim = ModelSimulator(prepared, problem, mults, prefix_cache=args.staged)
    cache = SimulationCache(sim)
    confidence = float(prepared.study.search.early_rejection_confidence)
    rng = random.Random(args.seed)
    if args.staged and problem.exact is not None:
        cache.evaluate([tuple(problem.exact for _ in problem.layers)])  # the front to beat
    threshold = front_threshold(problem, cache)
    wall, cpu, accuracy, images = [], [], [], []
    for _ in range(args.n):
        genome = tuple(rng.choice(options) for options in problem.choices)
        t, c = time.perf_counter(), time.process_time()
        if args.staged:
            r = cache.evaluate_staged([genome], threshold, confidence)[0]
            assert isinstance(r, Staged), r
            acc, seen = r.accuracy, r.images
        else:
            acc, seen = sim.accuracy(genome), sim.size("val")
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        accuracy.append(acc)
        images.append(seen)
    print(
        json.dumps(
            {
                "val_images": sim.size("val"),
                "mode": "staged" if args.staged else "full",
                "threads": torch.get_num_threads(),
                "batch": sim.batch_size,
                "wall_seconds": [round(w, 3) for w in wall],
                "cpu_seconds": [round(c, 3) for c in cpu],
                "images": images,
                "candidates_per_second": args.n / sum(wall),
                "candidates_per_cpu_second": args.n / sum(cpu),
                "accuracy": accuracy,
            }
        )
    )


if __name__ == "__main__":
    main()
