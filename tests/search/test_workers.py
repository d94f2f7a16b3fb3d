"""Workers that never hang: optuna's heartbeat re-queues the trials of a worker killed on another host
(a UTS namespace with its own hostname, on loopback PostgreSQL), a live worker's long trial is not taken
from it, a kill -9 wastes at most the simulation in progress, and one SQLite study refuses a second
worker in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic import synthetic_problem

from dse.search.accurate import simulated_count
from dse.search.storage import (
    _HEARTBEATS,
    SqliteWorkerLock,
    beat,
    create_or_load_study,
    make_sampler,
    open_storage,
    requeue_stale_trials,
    requeued_count,
)
from dse.util import UserError

SCRIPT = Path(__file__).with_name("test_search_worker_script.py")
OTHER_HOST = "dse-other-host"


def _worker(url: str, log: Path, *extra: str, uts: bool = False) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(SCRIPT), "--storage", url, "--log", str(log), *extra]
    if uts:  # own UTS namespace: another hostname, as a worker on another machine has
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(log: Path, n: int, pid: int | None = None, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists():
            rows = [json.loads(x) for x in log.read_text().splitlines()]
            if len([r for r in rows if pid is None or r["pid"] == pid]) >= n:
                return
        time.sleep(0.05)
    raise AssertionError(f"{log}: fewer than {n} simulations after {timeout} s")


def test_heartbeat_keeps_a_live_slow_trial_and_requeues_a_silent_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    problem = synthetic_problem(3, 4)
    storage = open_storage(url, heartbeat_interval=1, grace_period=3)
    study = create_or_load_study(storage, "s", problem.fingerprint(), {}, make_sampler(4, 0), url)
    from dse.search.accurate import distributions

    live = study.ask(fixed_distributions=distributions(problem))
    live.set_user_attr("origin", "nsga2")
    beat(study, live)  # this process keeps beating for it (the daemon thread)
    silent = study.ask(fixed_distributions=distributions(problem))
    silent.set_user_attr("worker", f"{OTHER_HOST}:1")  # another host: no PID check can see it died
    study._storage.record_heartbeat(silent._trial_id)  # one beat, then its worker is gone
    time.sleep(5)  # longer than the grace period
    assert requeue_stale_trials(study) == 1
    trials = study.get_trials()
    assert trials[live.number].state.name == "RUNNING"  # a long simulation of a live worker is not taken
    assert trials[silent.number].state.name == "FAIL"
    (copy,) = [t for t in trials if t.user_attrs.get("requeued_from") == silent.number]
    assert copy.state.name == "WAITING" and copy.system_attrs["fixed_params"] == trials[silent.number].params
    assert requeued_count(trials) == 1
    study.tell(live, [0.5, 0.5])
    time.sleep(2.5)  # the thread notices the trial finished and stops beating for it
    assert not [k for k in _HEARTBEATS.trials if k[1] == live._trial_id]


def test_a_second_process_on_one_sqlite_study_is_refused_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    log = tmp_path / "sims.jsonl"
    common = ["--budget", "30", "--delay", "0.5"]  # 15 s: the second one starts meanwhile
    first = _worker(url, log, *common)
    _wait_for_lines(log, 2)
    second = subprocess.run(
        [sys.executable, str(SCRIPT), "--storage", url, "--log", str(log), *common, "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --storage sqlite")
    assert "PostgreSQL" in lines[0] and f"worker {socket.gethostname()}:{first.pid}" in lines[0]
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    genomes = [tuple(json.loads(x)["genome"]) for x in log.read_text().splitlines()]
    assert len(genomes) == len(set(genomes)) == 30  # nothing simulated twice, the budget reached
    # in one process, the lock is released when run_trials returns: a later worker may take the study
    study = create_or_load_study(
        open_storage(url), "synthetic", synthetic_problem(5, 8).fingerprint(), {}, make_sampler(8, 0), url
    )
    SqliteWorkerLock(study).release()
    held = SqliteWorkerLock(study)
    with pytest.raises(UserError, match="already running trials"):
        SqliteWorkerLock(study)
    held.release()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_killed_on_another_host_returns_its_trials_within_a_minute(tmp_path, postgres_url):
    """The survivor used to wait 3600 s (stale detection checked PIDs of its own hostname only)."""
    log = tmp_path / "sims.jsonl"
    open_storage(postgres_url)  # tables created once, as `dse search` does before workers join
    # its own study: the PostgreSQL database is shared by the session's tests
    common = ["--study", "uts", "--budget", "40", "--delay", "0.3", "--heartbeat", "2", "--grace", "6"]
    far = _worker(postgres_url, log, *common, "--seed", "1", uts=True)
    _wait_for_lines(log, 3, pid=far.pid)
    near = _worker(postgres_url, log, *common, "--seed", "2")
    _wait_for_lines(log, 2, pid=near.pid)
    problem = synthetic_problem(5, 8)
    watch = create_or_load_study(
        open_storage(postgres_url), "uts", problem.fingerprint(), {}, make_sampler(8, 0), postgres_url
    )

    def far_running() -> list[int]:
        trials = watch.get_trials(deepcopy=False)
        return [
            t.number
            for t in trials
            if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").startswith(OTHER_HOST + ":")
        ]

    # killed while it holds a trial: frozen first, so that the trial it holds cannot be told in between
    # (a plain kill between its tell and its next ask left nothing to re-queue, and the test failed in CI)
    deadline = time.monotonic() + 60
    while True:
        os.kill(far.pid, signal.SIGSTOP)
        held = far_running()
        if held or time.monotonic() > deadline:
            break
        os.kill(far.pid, signal.SIGCONT)
        time.sleep(0.05)
    assert held, "the far worker never held a RUNNING trial"
    os.kill(far.pid, signal.SIGKILL)
    far.wait()
    t_kill = time.monotonic()
    while far_running() and time.monotonic() - t_kill < 120:
        time.sleep(0.2)
    returned_s = time.monotonic() - t_kill  # the dead worker's trials are FAIL and queued again
    assert not far_running() and returned_s < 60, (held, returned_s)
    try:  # the survivor then finishes the budget (slowly on a loaded machine)
        out, err = near.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # hung: its stacks (faulthandler on SIGUSR1) and the trials
        os.kill(near.pid, signal.SIGUSR1)
        time.sleep(1)
        near.kill()
        err = near.communicate()[1]
        left = [
            (t.number, t.state.name, t.user_attrs) for t in watch.get_trials() if t.state.name != "COMPLETE"
        ]
        raise AssertionError(f"the survivor hung; trials not complete: {left}\n{err[-6000:]}") from None
    waited = time.monotonic() - t_kill
    assert near.returncode == 0, err[-2000:]
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert {r["host"] for r in rows} == {OTHER_HOST, socket.gethostname()}
    study = create_or_load_study(
        open_storage(postgres_url), "uts", problem.fingerprint(), {}, make_sampler(8, 0), postgres_url
    )
    trials = study.get_trials()
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]  # nothing left hanging
    assert simulated_count(trials) == 40
    stale = {t.user_attrs["requeued_from"] for t in trials if "requeued_from" in t.user_attrs}
    assert stale, "the far worker held RUNNING trials when it was killed"
    # the far worker's (one killed inside ask has no worker attribute yet: stale after 2x grace)
    assert all(
        trials[n].user_attrs.get("worker", OTHER_HOST + ":").startswith(OTHER_HOST + ":") for n in stale
    )
    assert all(trials[n].state.name == "FAIL" for n in stale)
    genomes = [tuple(r["genome"]) for r in rows]
    assert len(genomes) - len(set(genomes)) <= 1  # at most the far worker's simulation in progress
    print(
        f"kill -9 on {OTHER_HOST}: {len(stale)} trials re-queued, {len(genomes) - len(set(genomes))} "
        f"simulations repeated, its trials returned {returned_s:.1f} s and the survivor finished "
        f"{waited:.1f} s after the kill"
    )
