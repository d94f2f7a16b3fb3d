"""Subprocess entry for the search tests (kill -9 resume, PostgreSQL workers): a synthetic search on an
optuna storage, each simulated genome appended to a log file. Holds no tests itself. A UserError is
printed as the CLI does (`error: …`, one line, exit 2)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # a hung worker's stacks, for the tests' failure messages
    from synthetic import SyntheticEvaluator, synthetic_problem

    from dse.search.accurate import run_trials
    from dse.search.simulate import SimulationCache
    from dse.search.storage import (
        ATTR_SEEDED,
        GRACE_PERIOD_S,
        HEARTBEAT_INTERVAL_S,
        create_or_load_study,
        make_sampler,
        open_storage,
    )
    from dse.util import UserError

    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", default="synthetic")
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--heartbeat", type=int, default=HEARTBEAT_INTERVAL_S)
    ap.add_argument("--grace", type=int, default=GRACE_PERIOD_S)
    a = ap.parse_args()

    problem = synthetic_problem(5, 8)
    evaluator = SyntheticEvaluator(problem, delay_s=a.delay)

    class Logged:
        def accuracy(self, genome, split="val"):
            acc = evaluator.accuracy(genome, split)
            with open(a.log, "a") as f:
                f.write(
                    json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "genome": list(genome)})
                    + "\n"
                )
            return acc

    storage = open_storage(a.storage, heartbeat_interval=a.heartbeat, grace_period=a.grace)
    study = create_or_load_study(
        storage,
        a.study,
        problem.fingerprint(),
        {"synthetic": True},
        make_sampler(a.population, a.seed),
        a.storage,
    )
    if not study.user_attrs.get(ATTR_SEEDED):
        for g in problem.homogeneous():
            study.enqueue_trial(
                problem.assignment(g), user_attrs={"origin": "homogeneous"}, skip_if_exists=True
            )
        study.set_user_attr(ATTR_SEEDED, True)
    try:
        stats = run_trials(
            study, problem, SimulationCache(Logged()), a.budget, a.population, seed=a.seed, poll_s=0.1
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"simulated": stats.simulated, "cached": stats.cached, "lost": stats.lost}))


if __name__ == "__main__":
    main()
