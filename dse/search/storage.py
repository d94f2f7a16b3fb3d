"""Optuna storage for the accurate stage: SQLite in the run directory by default, any optuna RDB URL
(e.g. postgresql://user:pw@host/db) for several workers. The study's configuration lives in the optuna
study's user attributes, so `dse worker` can join with nothing but the URL and the study name.
"""

from __future__ import annotations

import os
import re
import socket
import time
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


def default_storage_url(run_dir: Path) -> str:
    path = RunDir(Path(run_dir).resolve()).optuna_db
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An optuna RDBStorage for `url`; an unreachable or malformed URL is a UserError (one line)."""
    import optuna

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
    for attempt in range(3):  # two processes creating the tables of a fresh database race once
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            break
        except Exception as e:  # sqlalchemy / driver errors: say what failed in one line
            if attempt < 2 and ("already exists" in str(e) or "UniqueViolation" in str(e)):
                time.sleep(0.5)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"--storage {redact(url)}: cannot open the storage ({first})") from None
    if url.startswith("sqlite"):
        _sqlite_fast_commits(storage)
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
    """A RUNNING trial whose worker is gone: a dead process on this host, or older than `stale_after_s`."""
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


def requeue_stale_trials(study: optuna.Study, stale_after_s: float = 3600.0) -> int:
    """Fail the RUNNING trials whose worker died (e.g. after kill -9) and enqueue their parameters again,
    so the same candidates are asked next. Returns how many were re-queued."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, stale_after_s):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "stale", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except Exception:  # another worker finished or failed it first
            continue
        attrs = {"origin": t.user_attrs.get("origin", "nsga2"), "requeued_from": t.number}
        if "predicted_accuracy" in t.user_attrs:
            attrs["predicted_accuracy"] = t.user_attrs["predicted_accuracy"]
        study.enqueue_trial(dict(t.params), user_attrs=attrs)
        n += 1
    return n
