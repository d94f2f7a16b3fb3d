"""The search's bad inputs are refused before the prepare stage trains anything (one-line UserError,
nothing written): a budget smaller than the seeds (naming how many), a space in which every layer may
only be exact, population < 4, an early-rejection confidence outside (0, 1)."""

from __future__ import annotations

import time

import pytest
from synthetic import TINY_SPACE as SPACE

from dse.search.run import run_search
from dse.util import UserError

STUDY = """
name = "digits_tiny"
search_space = "tiny_space.toml"
[model]
name = "digits_cnn"
[data]
name = "digits"
[train]
epochs = 3
[agn]
lambdas = [0.2, 0.05]
[search]
budget = 40
population = 6
"""

EXACT_ONLY = SPACE + "".join(
    f'[layers.{n}]\nmultipliers = ["exact_u8"]\n' for n in ("conv1", "conv2", "fc1", "fc2")
)


@pytest.mark.parametrize(
    ("study", "space", "budget", "words"),
    [
        # 10 seeds: all-exact, 2 AGN mappings, 7 homogeneous (one per approximate multiplier of the space;
        # exact everywhere is the all-exact seed)
        (STUDY.replace("budget = 40", "budget = 9"), SPACE, None, "smaller than the 10 seeds"),
        (STUDY, SPACE, 7, "search.budget = 7: smaller than the 10 seeds (all-exact, 2 AGN mappings, 7 homo"),
        (STUDY, EXACT_ONLY, None, "every layer is restricted to the exact multiplier 'exact_u8'"),
        (STUDY.replace("population = 6", "population = 3"), SPACE, None, "population"),
        (STUDY + "early_rejection_confidence = 1.0\n", SPACE, None, "early_rejection_confidence"),
        (STUDY + "early_rejection_confidence = 0\n", SPACE, None, "early_rejection_confidence"),
    ],
)
def test_bad_search_inputs_fail_before_prepare_and_write_nothing(tmp_path, study, space, budget, words):
    (tmp_path / "tiny_space.toml").write_text(space)
    path = tmp_path / "study.toml"
    path.write_text(study)
    run = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        run_search(path, out=run, budget=budget)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not run.exists()  # no prepare stage, nothing of the search
    assert time.perf_counter() - t0 < 30  # refused without training (the prepare stage takes longer)


def test_a_budget_equal_to_the_seeds_passes_the_check(tmp_path):
    from dse.search.run import check_before_prepare

    (tmp_path / "tiny_space.toml").write_text(SPACE)
    path = tmp_path / "study.toml"
    path.write_text(STUDY.replace("budget = 40", "budget = 10"))
    check_before_prepare(path, None)  # no error: 10 distinct seeds (exact everywhere counted once)
    with pytest.raises(UserError, match="smaller than the 10 seeds"):
        check_before_prepare(path, 9)
