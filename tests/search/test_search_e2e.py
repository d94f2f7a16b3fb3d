"""`dse search` end to end on the digits study (tiny training and budget): a valid summary.json, the
report does not fail the search, a rerun continues the same study, `dse worker` joins it, and a changed
configuration under the same study name is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DSE = [sys.executable, "-c", "from dse.cli import main; main()"]

STUDY = """
name = "digits_tiny"
search_space = "unsigned_sm"
[model]
name = "digits_cnn"
[data]
name = "digits"
val_size = 400
test_size = 297
[train]
epochs = 3
qat_epochs = 1
[agn]
lambdas = [0.2]
epochs = 1
[search]
budget = 10
population = 6
seed = 0
random_baseline = true
"""


def _dse(*args, timeout=600):
    env = {"DSE_NO_PROGRESS": "1"}
    import os

    return subprocess.run(
        [*DSE, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )


@pytest.mark.slow
def test_search_end_to_end_on_digits_writes_a_valid_summary_and_workers_join(tmp_path):
    study = tmp_path / "digits_tiny.toml"
    study.write_text(STUDY)
    run = tmp_path / "run"
    r = _dse("search", str(study), "--out", str(run), "--json", "--no-report")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # exactly one JSON document on stdout
    assert summary == json.loads((run / "summary.json").read_text())
    for key in (
        "schema_version",
        "study",
        "quant_accuracy",
        "quant_test_accuracy",
        "evaluations",
        "seconds",
        "simulations_per_second",
        "outside_simulation_share",
        "surrogate_kendall_tau",
        "hypervolume",
        "hypervolume_history",
        "layers",
        "front",
        "points",
        "baselines",
    ):
        assert key in summary
    assert summary["evaluations"] == 10 == len(summary["points"])
    assert set(summary["baselines"]) == {"homogeneous", "agn", "random"}
    assert len(summary["baselines"]["random"]["points"]) == 10
    layer_names = {layer["name"] for layer in summary["layers"]}
    from dse.multipliers import load_library

    lib = load_library(tmp_path / "no-user-library")
    macs = {layer["name"]: layer["macs"] for layer in summary["layers"]}
    for p in summary["front"] + [p for b in summary["baselines"].values() for p in b["points"]]:
        assert set(p["assignment"]) == layer_names
        # energy on the one exact scale: the MAC-weighted mean of the chosen multipliers' energy_rel, and
        # never above exact (the space's "*" leaves dominated designs out)
        chosen = {n: lib.get(m) for n, m in p["assignment"].items()}
        expect = sum(macs[n] * m.energy_rel for n, m in chosen.items()) / sum(macs.values())
        assert p["energy_rel"] == pytest.approx(expect, rel=1e-9) and 0 <= p["energy_rel"] <= 1
        assert not any(m.dominated for m in chosen.values()) and 0 <= p["accuracy"] <= 1
        assert p["test_accuracy"] is not None  # re-measured on the test split
    assert summary["front"] and all(p["trial"] is not None for p in summary["front"])
    assert summary["hypervolume"] >= summary["baselines"]["homogeneous"]["hypervolume"] * 0.5
    # a rerun with a larger budget continues the same optuna study (the 10 trials are kept)
    url = f"sqlite:///{run / 'search' / 'optuna.db'}"
    r = _dse("search", str(study), "--out", str(run), "--json", "--no-report", "--budget", "14")
    assert r.returncode == 0, r.stderr[-3000:]
    s2 = json.loads(r.stdout)
    assert s2["evaluations"] == 14
    old = {p["trial"]: p["assignment"] for p in summary["points"]}
    new = {p["trial"]: p["assignment"] for p in s2["points"]}
    assert all(new[t] == a for t, a in old.items())
    # a worker joins with its own run directory (never the storage's); the budget is spent: it simulates nothing
    r = _dse("worker", str(run), "--storage", url, "--study", "digits_tiny", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["simulated"] == 0
    # another configuration under the same study name is refused, with the way out
    study.write_text(STUDY.replace("population = 6", "population = 8"))
    r = _dse("search", str(study), "--out", str(run), "--no-report")
    assert r.returncode == 2
    assert (
        "different configuration" in r.stderr and "--study-name" in r.stderr and "Traceback" not in r.stderr
    )
