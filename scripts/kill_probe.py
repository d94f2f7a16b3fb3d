"""Kill -9 probe of the search workers (issue 14): a synthetic search (tests/search/synthetic.py) on an
optuna storage, a worker killed -9 at random moments and restarted until the budget is reached; prints
kills survived / tried, trials lost, simulations repeated (duplicated), trials re-queued (re-run).

    python scripts/kill_probe.py --kills 5 [--storage postgresql://…] [--uts]

--uts: the killed worker runs in its own UTS namespace (another hostname, as on another machine; needs
root) next to a surviving worker on this host; without it each kill is followed by a resume."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "search" / "test_search_worker_script.py"
sys.path.insert(0, str(REPO / "tests" / "search"))


def main() -> None:
    from synthetic import synthetic_problem

    from dse.search.accurate import simulated_count
    from dse.search.storage import create_or_load_study, make_sampler, open_storage, requeued_count

    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--uts", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="kill_probe_"))
    url = a.storage or f"sqlite:///{tmp / 'optuna.db'}"
    log = tmp / "sims.jsonl"
    common = ["--storage", url, "--log", str(log), "--budget", str(a.budget), "--delay", str(a.delay)]
    common += ["--heartbeat", "2", "--grace", "6"]
    open_storage(url)

    def start(seed: int, uts: bool = False) -> subprocess.Popen[str]:
        cmd = [sys.executable, str(SCRIPT), *common, "--seed", str(seed)]
        if uts:
            cmd = ["unshare", "--uts", "sh", "-c", 'hostname dse-other-host && exec "$@"', "sh", *cmd]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def lines() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    survived = 0
    t0 = time.monotonic()
    survivor = start(100) if a.uts else None
    for k in range(a.kills):
        victim = start(k + 1, uts=a.uts)
        target = lines() + rng.randint(2, 8)
        while lines() < target and victim.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, a.delay))  # somewhere inside a simulation or between two
        if victim.poll() is not None:
            break  # the budget was reached before this kill
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        survived += 1
    finisher = survivor or start(999)
    out, err = finisher.communicate(timeout=600)
    wall = time.monotonic() - t0
    problem = synthetic_problem(5, 8)
    study = create_or_load_study(
        open_storage(url), "synthetic", problem.fingerprint(), {}, make_sampler(8, 0), url
    )
    trials = study.get_trials()
    genomes = [tuple(json.loads(x)["genome"]) for x in log.read_text().splitlines()]
    report = {
        "storage": url.split("://")[0],
        "uts": a.uts,
        "kills_tried": a.kills,
        "kills_survived": survived if finisher.returncode == 0 else 0,
        "finisher_rc": finisher.returncode,
        "simulated": simulated_count(trials),
        "budget": a.budget,
        "trials_lost": sum(1 for t in trials if t.state.name in ("RUNNING", "WAITING")),
        "simulations_duplicated": len(genomes) - len(set(genomes)),
        "trials_requeued": requeued_count(trials),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(report))
    if finisher.returncode != 0:
        print(err[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
