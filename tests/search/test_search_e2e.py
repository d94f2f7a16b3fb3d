"""`dse search` end to end on the digits study (tiny training and budget): a valid summary.json, the
report does not fail the search, a rerun continues the same study, `dse worker` joins it, and a changed
configuration under the same study name is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from synthetic import TINY_SPACE as SPACE

DSE = [sys.executable, "-c", "from dse.cli import main; main()"]


STUDY = """
name = "digits_tiny"
search_space = "tiny_space.toml"
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
budget = 14
population = 6
seed = 0
calibration_images = 64
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
    (tmp_path / "tiny_space.toml").write_text(SPACE)
    exact_only = SPACE.replace('multipliers = ["exact_u8", "trunc[2-6]_u8", "drum4_u8", "drum5_u8"]', "")
    layers = "".join(f'[layers.{n}]\nmultipliers = ["exact_u8"]\n' for n in ("conv1", "conv2", "fc1", "fc2"))
    (tmp_path / "exact_space.toml").write_text(exact_only + 'multipliers = ["*"]\n' + layers)
    run = tmp_path / "run"
    # bad input first, nothing of the search written: a budget below the 9 seeds (all-exact, 1 AGN
    # mapping, 7 homogeneous besides exact everywhere), population < 4, a confidence outside (0, 1)
    for bad, words in (
        (STUDY.replace("budget = 14", "budget = 8"), "smaller than the 9 seeds"),
        (STUDY.replace("population = 6", "population = 3"), "population"),
        (STUDY + "early_rejection_confidence = 1.0\n", "early_rejection_confidence"),
        (STUDY.replace("tiny_space.toml", "exact_space.toml"), "every layer is restricted to the exact"),
    ):
        (tmp_path / "bad.toml").write_text(bad)
        r = _dse("search", str(tmp_path / "bad.toml"), "--out", str(run), "--no-report")
        lines = [x for x in r.stderr.strip().splitlines() if x.startswith("error")]
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr and not (run / "summary.json").exists()
        assert not run.exists()  # refused before the prepare stage: nothing written at all
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
    # the budget (14 full-split simulations) is spent in images: candidates rejected early cost a slice
    n_val = 400
    assert summary["evaluations"] == len(summary["points"]) >= 14
    assert summary["simulated_images"] == sum(p["images"] for p in summary["points"])
    assert 14 * n_val <= summary["simulated_images"] < 15 * n_val
    assert all(p["images"] == n_val for p in summary["points"] if not p["partial"])
    assert all(p["images"] < n_val for p in summary["points"] if p["partial"])
    assert summary["front"] and not any(p["partial"] for p in summary["front"])  # never a partial front
    assert set(summary["baselines"]) == {"homogeneous", "agn", "random", "random_with_seeds"}
    # random search spends the same budget with the same early rejection: 14 full-split simulations
    # in images (a candidate rejected after k images costs k / n), and the summary says what it simulated
    rand = summary["baselines"]["random"]
    spent = sum(min(1.0, p["images"] / n_val) for p in rand["points"])
    assert 14 <= spent < 15 and rand["simulated_images"] == sum(p["images"] for p in rand["points"])
    assert all(p["images"] == n_val for p in rand["points"] if not p["partial"])
    # the seeds are their own origins and come first; every later candidate was proposed by the
    # surrogate's NSGA-II (exploit or explore), none by optuna's sampler
    origins = [p["origin"].split(":")[0] for p in sorted(summary["points"], key=lambda p: p["trial"])]
    assert set(origins[:9]) <= {"exact", "agn", "homogeneous"} and "nsga2" not in origins
    assert set(origins[9:]) <= {"surrogate", "explore"} and origins[9:]
    assert set(summary["hypervolume_by_origin"]) <= set(origins)
    assert summary["hypervolume"] >= max(summary["hypervolume_by_origin"].values()) - 1e-12
    predicted = [p for p in summary["points"] if p["predicted_accuracy"] is not None]
    assert len(predicted) == len(summary["points"])  # a prediction stored before each simulation
    for key in ("best_saving_within_1pp_test", "saving_ratio_vs_homogeneous_test"):
        assert key in summary["targets"]
    q_test = summary["quant_test_accuracy"]
    ok = [1 - p["energy_rel"] for p in summary["front"] if p["test_accuracy"] >= q_test - 0.01]
    assert summary["targets"]["best_saving_within_1pp_test"] == pytest.approx(max(ok, default=0.0))
    agn = summary["baselines"]["agn"]
    assert "best_saving_within_1pp" in agn and "best_saving_within_1pp_test" in agn
    assert summary["simulated_images_per_front_point"] == pytest.approx(
        summary["simulated_images"] / len(summary["front"])
    )
    # search.calibration_images is used: the layer profiles were taken on 64 training images
    from dse.errors.profiles import LayerProfiles

    assert LayerProfiles.load(run / "profiles" / "profiles.npz").images == 64
    layer_names = {layer["name"] for layer in summary["layers"]}
    from dse.multipliers import load_library

    lib = load_library(tmp_path / "no-user-library")
    macs = {layer["name"]: layer["macs"] for layer in summary["layers"]}
    from dse.search.pareto import pareto_mask

    for b in summary["baselines"].values():  # each baseline's validation front is re-measured on test
        full = [p for p in b["points"] if not p["partial"]]
        mask = pareto_mask([p["energy_rel"] for p in full], [p["accuracy"] for p in full])
        assert all(p["test_accuracy"] is not None for p, keep in zip(full, mask) if keep)
        assert all(p["test_accuracy"] is None for p in b["points"] if p["partial"])
    for p in summary["front"] + [p for b in summary["baselines"].values() for p in b["points"]]:
        assert set(p["assignment"]) == layer_names
        # energy on the one exact scale: the MAC-weighted mean of the chosen multipliers' energy_rel, and
        # never above exact (the space's "*" leaves dominated designs out)
        chosen = {n: lib.get(m) for n, m in p["assignment"].items()}
        expect = sum(macs[n] * m.energy_rel for n, m in chosen.items()) / sum(macs.values())
        assert p["energy_rel"] == pytest.approx(expect, rel=1e-9) and 0 <= p["energy_rel"] <= 1
        assert not any(m.dominated for m in chosen.values()) and 0 <= p["accuracy"] <= 1
    assert all(p["test_accuracy"] is not None for p in summary["front"])  # re-measured on the test split
    assert summary["front"] and all(p["trial"] is not None for p in summary["front"])
    # a rerun with a larger budget continues the same optuna study (the 10 trials are kept)
    url = f"sqlite:///{run / 'search' / 'optuna.db'}"
    r = _dse("search", str(study), "--out", str(run), "--json", "--no-report", "--budget", "18")
    assert r.returncode == 0, r.stderr[-3000:]
    s2 = json.loads(r.stdout)
    assert s2["evaluations"] > summary["evaluations"] and 18 * n_val <= s2["simulated_images"] < 19 * n_val
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
