"""Optuna storage for the accurate stage: SQLite in the run directory by default, any optuna RDB URL
(e.g. postgresql://user:pw@host/db) for several workers. The study's configuration lives in the optuna
study's user attributes, so `dse worker` can join with nothing but the URL and the study name.

Dead workers, on any host: every storage is opened with optuna's heartbeat (`HEARTBEAT_INTERVAL_S`,
`GRACE_PERIOD_S`); a worker beats for its RUNNING trials from a daemon thread (`beat`), and
`requeue_stale_trials` fails the trials whose heartbeat stopped (optuna's `fail_stale_trials`) and
enqueues their parameters again (`_requeue_failed_trial`, the stale-trial callback), so a killed worker's
trials are asked again within about a minute. One SQLite study takes one worker at a time
(`SqliteWorkerLock`): SQLite ignores `SELECT … FOR UPDATE`, so two processes could take the same trial.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dse.rundir import RunDir
from dse.util import UserError

if TYPE_CHECKING:
    import optuna

DIRECTIONS: list[Literal["minimize", "maximize"]] = ["minimize", "maximize"]  # energy_rel, accuracy
ATTR_CONFIG = "dse_config"
ATTR_FINGERPRINT = "dse_fingerprint"
ATTR_BUDGET = "dse_budget"
ATTR_SEEDED = "dse_seeded"
ATTR_PROPOSED = "dse_proposed"  # the first batch of surrogate proposals (its prior) has been enqueued
ATTR_REQUEUED_FROM = "requeued_from"  # on a trial enqueued again: the number of the stale trial it repeats

HEARTBEAT_INTERVAL_S = 10  # a worker records a heartbeat for each of its RUNNING trials this often
GRACE_PERIOD_S = 30  # a RUNNING trial without a heartbeat for this long is failed and asked again


def default_storage_url(run_dir: Path) -> str:
    path = RunDir(Path(run_dir).resolve()).optuna_db
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(
    url: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S
) -> optuna.storages.RDBStorage:
    """An optuna RDBStorage for `url` with the heartbeat on (stale trials are re-queued); an unreachable
    or malformed URL is a UserError (one line)."""
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "://" not in url:
        raise UserError(
            f"--storage {url}: expected an optuna storage URL such as sqlite:///path.db or postgresql://user:pw@host/db"
        )
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise ValueError(
            f"heartbeat {heartbeat_interval} s / grace {grace_period} s: expected 1 <= beat < grace"
        )
    for attempt in range(3):  # two processes creating the tables of a fresh database race once
        try:
            with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=_requeue_failed_trial,
                )
            break
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError, RuntimeError) as e:
            # driver / connection / URL errors (ImportError: no driver for the dialect; RuntimeError: a
            # schema of another optuna version): one line
            if attempt < 2 and ("already exists" in str(e) or "UniqueViolation" in str(e)):
                time.sleep(0.5)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"--storage {redact(url)}: cannot open the storage ({first})") from None
    if url.startswith("sqlite"):
        _sqlite_fast_commits(storage)
    # we ask/tell and beat ourselves (`beat`), which is what optuna's warning on each ask is about
    warnings.filterwarnings(
        "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
    )
    return storage


def _sqlite_fast_commits(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal + synchronous=NORMAL: commits without an fsync each (optuna commits per attribute),
    still safe against a killed process (only a power loss can drop the last commits)."""
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    engine.dispose()  # connections opened before the listener get the pragmas on reconnect


def make_sampler(population: int, seed: int | None) -> optuna.samplers.NSGAIISampler:
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=max(2, int(population)), seed=seed)


def create_or_load_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    fingerprint: str,
    config: dict[str, Any],
    sampler: optuna.samplers.BaseSampler | None,
    url: str = "",
) -> optuna.Study:
    """Create the optuna study `name`, or load it when it exists with the same fingerprint.
    A study of that name with another configuration is refused with a hint how to start fresh."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=DIRECTIONS, sampler=sampler)
        study.set_user_attr(ATTR_CONFIG, config)
        study.set_user_attr(ATTR_FINGERPRINT, fingerprint)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    for _ in range(50):  # another process may be between create_study and set_user_attr
        stored = study.user_attrs.get(ATTR_FINGERPRINT)
        if stored is not None:
            break
        time.sleep(0.1)
    if stored != fingerprint:
        where = redact(url) if url else "the storage"
        raise UserError(
            f"study {name!r} already exists in {where} with a different configuration (model, data, search "
            f"space or search settings changed); start fresh with --study-name NEW_NAME, a new --out directory, "
            f"or delete it: optuna delete-study --storage URL --study-name {name}"
        )
    return study


def load_existing_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler | None,
    url: str = "",
) -> optuna.Study:
    """Load a study that `dse search` created (for `dse worker`)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(
            f"--study {name}: no such study in {redact(url)} (studies there: {', '.join(names) or 'none'}); "
            f"start it with dse search --storage URL"
        ) from None
    if ATTR_CONFIG not in study.user_attrs:
        raise UserError(f"--study {name}: this optuna study was not created by dse search (no {ATTR_CONFIG})")
    return study


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: optuna.trial.FrozenTrial, stale_after_s: float) -> bool:
    """A RUNNING trial whose worker is gone, seen without the heartbeat: a dead process on this host, or
    older than `stale_after_s` (a trial of a storage without heartbeats)."""
    wid = trial.user_attrs.get("worker")
    if wid:
        host, _, pid = wid.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
            if not _pid_alive(int(pid)):
                return True
    start = trial.datetime_start
    if start is not None:
        from datetime import datetime

        age = (datetime.now() - start).total_seconds()
        if age > stale_after_s:
            return True
    return False


_requeued_here = 0  # trials this process re-queued (the callback runs inside optuna's fail_stale_trials)


def _requeue_failed_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """optuna's stale-trial callback: the trial was RUNNING on a worker whose heartbeat stopped and is now
    FAIL; enqueue its parameters again (same origin and prediction) so the candidate is still simulated."""
    global _requeued_here
    if not trial.params:  # killed inside ask, before optuna stored any parameter: nothing to repeat
        return
    attrs: dict[str, Any] = {
        "origin": trial.user_attrs.get("origin", "nsga2"),
        ATTR_REQUEUED_FROM: trial.number,
    }
    if "predicted_accuracy" in trial.user_attrs:
        attrs["predicted_accuracy"] = trial.user_attrs["predicted_accuracy"]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    _requeued_here += 1


def requeue_stale_trials(study: optuna.Study, stale_after_s: float = 3600.0) -> int:
    """Fail the RUNNING trials whose worker died (heartbeat stopped on any host; without the heartbeat: a
    dead process on this host, or older than `stale_after_s`) and enqueue their parameters again, so the
    same candidates are asked next. Returns how many were re-queued."""
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    before = _requeued_here
    with warnings.catch_warnings():  # marked experimental since optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)  # calls _requeue_failed_trial for each trial it failed
    n = _requeued_here - before
    # a worker killed inside `ask` leaves a RUNNING trial without a heartbeat or a worker attribute (a
    # live worker sets both right after ask returns): stale after twice the grace period
    unclaimed_s = min(stale_after_s, 2.0 * _grace_s(study))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, stale_after_s if "worker" in t.user_attrs else unclaimed_s):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker finished or failed it first
            continue
        _requeue_failed_trial(study, t)
        n += 1
    return n


def _grace_s(study: optuna.Study) -> float:
    """The storage's grace period in seconds (inf without the heartbeat)."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)
    interval = getattr(storage, "heartbeat_interval", None)
    if interval is None:
        return float("inf")
    grace = getattr(storage, "grace_period", None)
    return float(grace if grace is not None else 2 * interval)


def requeued_count(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """How many trials of a study repeat a stale one (a worker died while they were RUNNING)."""
    return sum(1 for t in trials if ATTR_REQUEUED_FROM in t.user_attrs)


class _Heartbeats:
    """One daemon thread per process that records a heartbeat every interval for each registered trial
    still RUNNING (a simulation batch may take minutes; the beat must not wait for it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.trials: dict[tuple[int, int], tuple[Any, int]] = {}  # (id(storage), trial_id) -> storage
        self.interval = float(HEARTBEAT_INTERVAL_S)
        self.thread: threading.Thread | None = None
        self.warned = False

    def add(self, storage: Any, trial_id: int) -> None:
        with self.lock:
            self.trials[(id(storage), trial_id)] = (storage, trial_id)
            self.interval = min(self.interval, float(storage.get_heartbeat_interval()))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="dse-heartbeat", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        import optuna
        import sqlalchemy.exc

        while True:
            time.sleep(self.interval)
            with self.lock:
                items = list(self.trials.items())
            for key, (storage, trial_id) in items:
                try:
                    if storage.get_trial(trial_id).state.is_finished():
                        with self.lock:
                            self.trials.pop(key, None)
                        continue
                    storage.record_heartbeat(trial_id)
                except (
                    sqlalchemy.exc.SQLAlchemyError,
                    optuna.exceptions.StorageInternalError,
                    KeyError,
                ) as e:
                    if not self.warned:  # the storage is unreachable for now: the next beat retries
                        self.warned = True
                        from dse.util import log

                        log(f"worker: heartbeat not recorded ({type(e).__name__}); retrying")


_HEARTBEATS = _Heartbeats()


def beat(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record a heartbeat for a trial just asked and keep beating for it while it is RUNNING (no-op on a
    storage without the heartbeat, e.g. in memory)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return
    storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    _HEARTBEATS.add(storage, trial._trial_id)


class SqliteWorkerLock:
    """One process asks trials of a SQLite storage at a time: SQLite ignores `SELECT … FOR UPDATE`, so a
    second process could take a trial the first one holds (it crashed with UpdateFinishedTrialError and
    simulated the trial twice). An exclusive `flock` on `<db>.worker.lock` (released by the kernel when
    the process dies, kill -9 included); a second process gets a one-line UserError. No-op for other
    storages."""

    def __init__(self, study: optuna.Study) -> None:
        self.fd: int | None = None
        storage = study._storage
        storage = getattr(storage, "_backend", storage)  # optuna's _CachedStorage wraps the RDBStorage
        url = str(getattr(storage, "url", ""))
        if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
            return
        path = Path(url[len("sqlite:///") :] + ".worker.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"--storage {url}: {holder} is already running trials of this SQLite storage; SQLite cannot "
                f"hand trials to several processes safely (it ignores row locks). For several workers use "
                f"PostgreSQL (--storage postgresql://user:pw@host/db)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"worker {worker_id()}".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> SqliteWorkerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
