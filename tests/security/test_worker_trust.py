"""`dse worker` runs only what its own command line names: the study, its model hook and the run directory
never come from the optuna storage (write access to the storage must not run code on every worker), and
a worker joins only a study whose identity hash in the storage equals its own."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dse.cli import cli
from dse.prepare import load_prepared
from dse.search.run import _config_and_fingerprint, run_worker
from dse.search.setup import build_setup
from dse.search.storage import ATTR_BUDGET, create_or_load_study, open_storage
from dse.util import UserError


def _evil_config(tmp_path):
    """What an attacker with write access to the storage would put there: a model hook of theirs (it would
    touch `marker` when imported) and a run directory of their choosing."""
    marker = tmp_path / "ran"
    hook = tmp_path / "evil.py"
    hook.write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef build(**kw):\n    raise SystemExit\n"
    )
    study = {
        "name": "s",
        "model": {"name": f"{hook}:build"},
        "data": {"name": "digits"},
        "search": {"budget": 0},
    }
    return {"study": study, "run_dir": str(tmp_path / "elsewhere"), "population": 4, "seed": 0}, marker


def test_a_worker_without_its_own_study_refuses_to_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    config, marker = _evil_config(tmp_path)
    create_or_load_study(open_storage(url), "s", "f" * 64, config, None, url)
    r = CliRunner().invoke(cli, ["worker", "--storage", url, "--study", "s"])
    assert r.exit_code == 2 and "takes no study, code or paths from the storage" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    with pytest.raises(UserError, match="not a run directory"):
        run_worker(url, "s", out=tmp_path / "nothing")
    assert not marker.exists() and not (tmp_path / "elsewhere").exists()


def test_a_worker_compares_the_study_identity_and_joins_only_its_own(tiny_digits_run, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    config, marker = _evil_config(tmp_path)
    storage = open_storage(url)
    # another study under that name (a different identity hash): refused, nothing of the storage's run
    create_or_load_study(storage, "other", "0" * 64, config, None, url)
    with pytest.raises(UserError, match=r"--study other: the study in the storage is not the one given here"):
        run_worker(url, "other", out=tiny_digits_run)
    assert not marker.exists() and not (tmp_path / "elsewhere").exists()
    # the same identity: it joins, with the storage's evil hook and run directory ignored
    prepared = load_prepared(tiny_digits_run)
    problem = build_setup(prepared, with_error_models=False).problem
    _, fp = _config_and_fingerprint(prepared, problem, prepared.study.search.population, 0)
    study = create_or_load_study(storage, "mine", fp, config, None, url)
    study.set_user_attr(ATTR_BUDGET, 2)
    r = CliRunner().invoke(
        cli,
        ["worker", str(tiny_digits_run), "--storage", url, "--study", "mine", "--json"],
        env={"DSE_NO_PROGRESS": "1"},
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["simulated"] == 2
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) == 2
    assert not marker.exists() and not (tmp_path / "elsewhere").exists()
