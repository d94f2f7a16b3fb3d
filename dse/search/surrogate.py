"""The surrogate stage: a cheap accuracy predictor from the error models, and pymoo NSGA-II over it.

Per layer l and allowed multiplier m, `distortion[l, m]` is the predicted squared error at the layer's
output relative to the layer's learned tolerance: (σ_pred² + μ_pred²) / tolerance_l² (all in the layer's
output units). A genome's predicted accuracy loss is

    loss_frac = 1 − exp(−Σ_l g_l · distortion[l, m_l]),   accuracy = q − loss_frac · (q − chance)

with q the quantized accuracy. The weights g_l ≥ 0 start equal (prior: the tolerances are right) and are
calibrated by a small non-negative least-squares fit on the candidates simulated so far (ridge towards the
prior), refit as simulations arrive. The shape 1 − exp(−x) saturates at chance accuracy like the real
network. The pymoo stage is vectorised over the population: thousands of candidates per millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dse.search.problem import Genome, SearchProblem


class Surrogate:
    def __init__(
        self,
        problem: SearchProblem,
        distortion: np.ndarray,
        quant_accuracy: float,
        chance_accuracy: float,
        ridge: float = 0.1,
    ) -> None:
        self.problem = problem
        self.distortion = np.asarray(distortion, dtype=np.float64)  # [L, max_choices]
        if self.distortion.shape[0] != len(problem.layers):
            raise ValueError("distortion must have one row per layer")
        self.q = float(quant_accuracy)
        self.chance = float(chance_accuracy)
        self.ridge = ridge
        self.weights = np.ones(len(problem.layers))
        self.fitted_on = 0
        self._population: np.ndarray | None = None

    # --- prediction ------------------------------------------------------------------------------
    def features(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return self.distortion[np.arange(idx.shape[1])[None, :], idx]

    def predict_index(self, idx: np.ndarray) -> np.ndarray:
        x = self.features(idx) @ self.weights
        return self.q - (1.0 - np.exp(-x)) * (self.q - self.chance)

    def predict(self, genomes: Sequence[Genome]) -> np.ndarray:
        if not genomes:
            return np.zeros(0)
        return self.predict_index(self.problem.to_index(genomes))

    # --- calibration -----------------------------------------------------------------------------
    def _target(self, accuracy: np.ndarray) -> np.ndarray:
        span = max(self.q - self.chance, 1e-6)
        frac = np.clip((self.q - np.asarray(accuracy, dtype=np.float64)) / span, 0.0, 0.99)
        return -np.log1p(-frac)

    def fit(self, genomes: Sequence[Genome], accuracies: Sequence[float]) -> None:
        """Calibrate the per-layer weights on simulated candidates (non-negative, ridge to the prior)."""
        from scipy.optimize import nnls

        if len(genomes) < 3:
            return
        f = self.features(self.problem.to_index(genomes))
        t = self._target(np.asarray(accuracies))
        s = f.sum(axis=1)
        scale = float(s @ t / (s @ s)) if s @ s > 0 else 1.0
        prior = np.full(f.shape[1], max(scale, 1e-6))
        alpha = self.ridge * float((f**2).sum()) / f.shape[1] + 1e-12
        a = np.vstack([f, np.sqrt(alpha) * np.eye(f.shape[1])])
        b = np.concatenate([t, np.sqrt(alpha) * prior])
        self.weights, _ = nnls(a, b, maxiter=50 * f.shape[1])
        self.fitted_on = len(genomes)

    def kendall_tau(self, genomes: Sequence[Genome], accuracies: Sequence[float]) -> float | None:
        """Kendall τ between predicted and simulated accuracy over the given candidates."""
        from scipy.stats import kendalltau

        if len(genomes) < 3:
            return None
        tau = kendalltau(self.predict(genomes), np.asarray(accuracies)).statistic
        return None if not np.isfinite(tau) else float(tau)

    # --- pymoo NSGA-II over the surrogate ---------------------------------------------------------
    def front(
        self,
        seeds: Sequence[Genome] = (),
        population: int = 100,
        generations: int | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Index genomes [F, L] of the surrogate's Pareto front (energy_rel vs predicted accuracy),
        sorted by energy. Warm-started from the previous call's final population."""
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.optimize import minimize

        surrogate, problem = self, self.problem
        n_var = len(problem.layers)

        class _Problem(Problem):
            def __init__(self) -> None:
                super().__init__(n_var=n_var, n_obj=2, xl=0, xu=problem.n_choices - 1, vtype=int)

            def _evaluate(self, x, out, *args, **kwargs):
                idx = np.rint(x).astype(np.int64)
                out["F"] = np.column_stack(
                    [problem.energy_rel_index(idx), surrogate.q - surrogate.predict_index(idx)]
                )

        rng = np.random.default_rng(seed)
        init = [problem.to_index(seeds)] if len(seeds) else []
        if self._population is not None:
            init.append(self._population)
        init.append(rng.integers(0, problem.n_choices[None, :], size=(population, n_var)))
        x0 = np.unique(np.vstack(init), axis=0)
        if len(x0) > population:  # keep the seeds, fill the rest at random
            n_seed = min(len(x0), population // 2)
            rest = n_seed + rng.permutation(len(x0) - n_seed)[: population - n_seed]
            x0 = x0[np.concatenate([np.arange(n_seed), rest])]
        algorithm = NSGA2(
            pop_size=population,
            sampling=x0.astype(float),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        if generations is None:  # a warm start needs far fewer generations than a cold one
            generations = 100 if self._population is None else 25
        res = minimize(_Problem(), algorithm, ("n_gen", generations), seed=seed, verbose=False)
        self._population = np.rint(res.pop.get("X")).astype(np.int64)
        x = np.rint(np.atleast_2d(res.X)).astype(np.int64)
        x = np.unique(x, axis=0)
        order = np.argsort(problem.energy_rel_index(x))
        return x[order]

    def suggest(
        self,
        simulated: list[tuple[Genome, float]],
        n: int,
        exclude: set[Genome] | None = None,
        seeds: Sequence[Genome] = (),
        seed: int = 0,
        max_loss: float | None = None,
    ) -> list[Genome]:
        """Refit on `simulated`, rerun the surrogate NSGA-II and return up to n unsimulated front genomes,
        spread over predicted accuracy loss from 0 to `max_loss` (default: a tenth of q − chance) so that
        the interesting band is sampled densely, then the cheapest remaining."""
        if simulated:
            self.fit([g for g, _ in simulated], [a for _, a in simulated])
        exclude = set(exclude or ()) | {g for g, _ in simulated}
        front = self.front(seeds=list(seeds) + [g for g, _ in simulated][-50:], seed=seed + self.fitted_on)
        genomes = [g for g in self.problem.from_index(front) if g not in exclude]
        if not genomes or n <= 0:
            return []
        loss = self.q - self.predict(genomes)
        max_loss = max_loss if max_loss is not None else 0.1 * (self.q - self.chance)
        targets = np.linspace(0.0, max_loss, n + 1)[1:] if n > 1 else np.array([0.01])
        picked: list[int] = []
        for t in targets:
            order = np.argsort(np.abs(loss - t))
            for i in order:
                if i not in picked:
                    picked.append(int(i))
                    break
        return [genomes[i] for i in picked][:n]
