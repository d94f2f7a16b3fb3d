"""Does P1's closed-form distortion rank candidates better than the sampled predictor's inside the search
surrogate? (a developer's tool, issue 17). On a finished run (a copy: its profiles cache may be read), the
surrogate (`dse.search.surrogate.Surrogate`) is built twice over the run's simulated points, once on the
sampled predictor's (σ² + μ²)/std² and once on P1's rms²/std² (`dse.errors.analytic.layer_rms_error`), and
Kendall τ against the simulated accuracy is printed: prospective (fitted on the points before each batch of
24, scored on the batch), 5-fold hold-out, the unfitted prior and in-sample.

    python scripts/p1_surrogate_tau.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau

from dse.errors import estimators as est
from dse.errors.analytic import layer_rms_error
from dse.errors.predict import predict_table
from dse.errors.profiles import get_profiles
from dse.multipliers.library import load_library
from dse.prepare import load_prepared
from dse.search.problem import SearchProblem
from dse.search.setup import build_problem, design_families
from dse.search.surrogate import Surrogate


def main(run: str) -> None:
    prepared = load_prepared(run)
    problem0, _ = build_problem(prepared)
    summ = json.loads(open(f"{run}/summary.json").read())
    used = {m for q in summ["points"] for m in q["assignment"].values()}
    lib = load_library()
    # the run's space may hold a few designs the current library leaves out of `*` (dominated): add them
    space = [lib.get(n) for n in sorted(set(problem0.choices[0]) | used)]
    names = [m.name for m in space]
    problem = SearchProblem.build(
        problem0.layers,
        problem0.macs,
        [names] * len(problem0.layers),
        {m.name: m.energy_rel for m in space},
        problem0.exact,
    )
    families = design_families(space)  # as the search builds it
    prof = get_profiles(prepared)
    pred = predict_table(prof, space, prepared.fmt.weight_scheme, "sampled")
    err = est.error_tables(space, prepared.fmt.weight_scheme)
    p1 = {p.name: layer_rms_error(err, p.hist_x, p.col_hists, p.fan_in, p.col_scale) for p in prof.layers}
    row = {n: i for i, n in enumerate(pred.layers)}
    n_l, n_c = len(problem.layers), int(problem.n_choices.max())
    d_s, d_p = np.zeros((n_l, n_c)), np.zeros((n_l, n_c))
    for li, name in enumerate(problem.layers):
        tol = max(float(pred.output_std[row[name]]), 1e-12)
        for ci, m in enumerate(problem.choices[li]):
            j = names.index(m)
            s, mu = pred.sigma[row[name], j], pred.mean[row[name], j]
            d_s[li, ci] = (s * s + mu * mu) / tol**2
            d_p[li, ci] = p1[name][j] ** 2 / tol**2
    pts = sorted(summ["points"], key=lambda p: p["trial"])
    genomes = [tuple(p["assignment"][n] for n in problem.layers) for p in pts]
    acc = np.array([p["accuracy"] for p in pts])
    chance = 1.0 / max(2, int(prepared.splits.num_classes))
    print(f"{len(pts)} points; the run's stored prospective tau {summ['surrogate_kendall_tau']}")

    def scored(d: np.ndarray, train: Sequence[int], test: Sequence[int]) -> tuple[list[float], list[float]]:
        s = Surrogate(problem, d, prepared.quant_accuracy, chance, families=families)
        s.fit([genomes[i] for i in train], acc[list(train)])
        return list(-s.score_index(problem.to_index([genomes[i] for i in test]))), list(acc[list(test)])

    for label, d in {"sampled": d_s, "p1": d_p, "mean(sampled, p1)": 0.5 * (d_s + d_p)}.items():
        out = {}
        sc: list[float] = []
        ac: list[float] = []
        for start in range(24, len(pts), 24):
            a, b = scored(d, range(start), range(start, min(start + 24, len(pts))))
            sc, ac = sc + a, ac + b
        out["prospective"] = kendalltau(sc, ac).statistic
        perm = np.random.default_rng(0).permutation(len(pts))
        sc, ac = [], []
        for f in range(5):
            test = perm[f::5]
            a, b = scored(d, np.setdiff1d(perm, test).tolist(), test.tolist())
            sc, ac = sc + a, ac + b
        out["5-fold"] = kendalltau(sc, ac).statistic
        s = Surrogate(problem, d, prepared.quant_accuracy, chance, families=families)
        out["prior"] = s.kendall_tau(genomes, acc)
        s.fit(genomes, acc)
        out["in-sample"] = s.kendall_tau(genomes, acc)
        print(label, {k: round(float(v), 3) for k, v in out.items() if v is not None})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
