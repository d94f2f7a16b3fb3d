"""The surrogate's accuracy model: bounded and monotone in every layer's distortion, calibrated on
simulated points (layer weights and link recovered), ranked without float ties, and its suggestions
dense near the quantized accuracy."""

from __future__ import annotations

import numpy as np

from dse.search.problem import SearchProblem
from dse.search.surrogate import Surrogate

Q, CHANCE = 0.98, 0.1


def _problem(n_layers: int = 4, n_mult: int = 8) -> SearchProblem:
    names = ["exact"] + [f"m{i}" for i in range(1, n_mult)]
    energies = {"exact": 1.0, **{f"m{i}": 1.0 - 0.9 * i / (n_mult - 1) for i in range(1, n_mult)}}
    layers = [f"l{i}" for i in range(n_layers)]
    return SearchProblem.build(layers, [100] * n_layers, [names] * n_layers, energies, exact="exact")


def _distortion(problem: SearchProblem) -> np.ndarray:
    # squared relative error grows ~100x per step of cheapness; exact has none
    steps = np.arange(int(problem.n_choices.max()))
    d = 1e-6 * 10.0 ** (2 * steps / 3)
    d[0] = 0.0
    return np.tile(d, (len(problem.layers), 1))


def _truth(problem, distortion, gains, genomes):
    """A 'network' that follows the model's shape with unequal layer gains and a different link."""
    idx = problem.to_index(genomes)
    z = (distortion[np.arange(idx.shape[1])[None, :], idx] * gains).sum(axis=1)
    return Q - (Q - CHANCE) / (1.0 + (0.3 / np.maximum(z, 1e-30)) ** 2.5)


def test_prediction_is_bounded_and_never_rises_with_more_distortion():
    problem = _problem()
    dist = _distortion(problem)
    sur = Surrogate(problem, dist, Q, CHANCE)
    rng = np.random.default_rng(0)
    genomes = problem.random_genomes(rng, 200)
    acc = sur.predict(genomes)
    assert np.all(acc <= Q + 1e-12) and np.all(acc >= CHANCE - 1e-12)
    assert abs(sur.predict([problem.all_exact()])[0] - Q) < 1e-9
    # a cheaper (more distorting) multiplier in any one layer never predicts a higher accuracy
    idx = problem.to_index(genomes)
    for layer in range(len(problem.layers)):
        worse = idx.copy()
        worse[:, layer] = np.minimum(worse[:, layer] + 1, problem.n_choices[layer] - 1)
        assert np.all(sur.predict_index(worse) <= sur.predict_index(idx) + 1e-12)


def test_fit_recovers_layer_gains_and_ranks_held_out_candidates():
    problem = _problem()
    dist = _distortion(problem)
    gains = np.array([4.0, 1.0, 1.0, 0.25])
    rng = np.random.default_rng(1)
    train = problem.random_genomes(rng, 80)
    test = problem.random_genomes(np.random.default_rng(2), 80)
    sur = Surrogate(problem, dist, Q, CHANCE)
    before = sur.kendall_tau(test, _truth(problem, dist, gains, test))
    sur.fit(train, _truth(problem, dist, gains, train))
    after = sur.kendall_tau(test, _truth(problem, dist, gains, test))
    assert after is not None and before is not None
    assert after >= 0.85 and after > before + 0.05
    w = sur.weights
    assert w[0] > w[1] > w[3] and w[0] > w[2] > w[3]  # the most and least sensitive layers are found
    # calibrated, not just ranked: predicted accuracy within a few pp of the truth on held-out points
    err = np.abs(sur.predict(test) - _truth(problem, dist, gains, test))
    assert np.median(err) < 0.03


def test_fit_corrects_a_multiplier_whose_predicted_distortion_is_off():
    """One design hurts the network 30x less than its predicted distortion says (fashion_resnet20's DRUM):
    its factor, shared by every layer, is learnt from the simulated points."""
    problem = _problem()
    dist = 10 * _distortion(problem)  # enough distortion that candidates' accuracies differ
    true_dist = dist.copy()
    off = 7  # "m7", the cheapest design: its distortion decides most candidates' accuracy
    true_dist[:, off] /= 30.0
    gains = np.ones(len(problem.layers))
    rng = np.random.default_rng(4)
    train = problem.random_genomes(rng, 120) + [("m7",) * 4, ("m6",) * 4]
    test = problem.random_genomes(np.random.default_rng(5), 120)
    plain = Surrogate(problem, dist, Q, CHANCE, multiplier_ridge=1e6)  # factors held at 1
    sur = Surrogate(problem, dist, Q, CHANCE)
    for s in (plain, sur):
        s.fit(train, _truth(problem, true_dist, gains, train))
    phi = dict(zip(sur.multiplier_names, sur.phi))
    # learnt: m7 distorts the network less than predicted (log-factor); the others' factors also absorb
    # the difference between the model's link and this network's, so only m7's sign is certain
    assert phi["m7"] < -1.0 and phi["m7"] == min(phi.values())
    assert np.allclose(plain.phi, 0.0, atol=1e-3)
    truth = _truth(problem, true_dist, gains, test)
    err_plain = np.median(np.abs(plain.predict(test) - truth))
    err = np.median(np.abs(sur.predict(test) - truth))
    assert err < err_plain / 2
    assert sur.kendall_tau(test, truth) > plain.kendall_tau(test, truth)


def test_a_family_factor_learns_what_its_members_share():
    """Four designs of one family all hurt the network 20x less than predicted: with one or two points per
    design their own factors barely move against their ridge, while the family's factor, shared by all
    four, does; predictions and ranking improve on held-out candidates."""
    problem = _problem()
    dist = 100 * _distortion(problem)
    family = ["m4", "m5", "m6", "m7"]
    cols = [problem.choices[0].index(m) for m in family]
    true_dist = dist.copy()
    true_dist[:, cols] /= 20.0
    gains = np.ones(len(problem.layers))
    homogeneous = [(m,) * len(problem.layers) for m in problem.choices[0][1:]]
    train = problem.random_genomes(np.random.default_rng(0), 16) + homogeneous
    test = problem.random_genomes(np.random.default_rng(100), 200)
    plain = Surrogate(problem, dist, Q, CHANCE)
    sur = Surrogate(
        problem, dist, Q, CHANCE, families={m: "drum" if m in family else m for m in problem.choices[0]}
    )
    assert plain.family_names == [] and sur.family_names == ["drum"]
    for s in (plain, sur):
        s.fit(train, _truth(problem, true_dist, gains, train))
    assert sur.psi[0] < -0.3

    def family_gap(s: Surrogate) -> float:  # mean log-factor of the family minus that of the other designs
        log_f = s._log_factor(s.phi, s.psi)
        inside = np.isin(s.multiplier_names, family)
        return float(log_f[inside].mean() - log_f[~inside].mean())

    assert family_gap(sur) < family_gap(plain) - 0.3 < 0  # nearer the truth, ln(1/20) = -3.0
    truth = _truth(problem, true_dist, gains, test)
    assert np.median(np.abs(sur.predict(test) - truth)) < np.median(np.abs(plain.predict(test) - truth))
    assert sur.kendall_tau(test, truth) > plain.kendall_tau(test, truth)


def test_fewer_than_three_points_keep_the_prior():
    problem = _problem()
    sur = Surrogate(problem, _distortion(problem), Q, CHANCE)
    g = problem.random_genomes(np.random.default_rng(0), 2)
    before = sur.predict(g)
    sur.fit(g, [0.5, 0.4])
    assert sur.fitted_on == 0 and np.allclose(sur.predict(g), before)
    assert sur.kendall_tau(g, [0.5, 0.4]) is None


def test_kendall_tau_ranks_tiny_distortions_that_round_to_the_same_accuracy():
    """Predicted accuracies q − 1e-20 all equal q in float64; the ranking still orders them."""
    problem = _problem(n_layers=1, n_mult=4)
    dist = np.array([[0.0, 1e-14, 1e-13, 1e-12]])
    sur = Surrogate(problem, dist, Q, CHANCE)
    genomes = [(m,) for m in problem.choices[0]]
    assert len(set(sur.predict(genomes).tolist())) == 1
    assert sur.kendall_tau(genomes, [0.98, 0.979, 0.978, 0.977]) == 1.0


def test_suggestions_are_unsimulated_and_concentrate_near_the_quantized_accuracy():
    problem = _problem(n_layers=5)
    dist = _distortion(problem)
    gains = np.ones(5)
    rng = np.random.default_rng(3)
    sim = problem.random_genomes(rng, 40)
    simulated = list(zip(sim, _truth(problem, dist, gains, sim).tolist()))
    sur = Surrogate(problem, dist, Q, CHANCE)
    picks = sur.suggest(simulated, 6, seed=0)  # 5 near the knee, 1 over the cheaper rest of the front
    assert 3 <= len(picks) <= 6 and not set(picks) & set(sim) and len(set(picks)) == len(picks)
    loss = Q - sur.predict(picks)
    knee, cover = loss[:5], loss[5:]
    assert np.all(knee <= 0.1 * (Q - CHANCE) * 1.5)
    # at least a third of the picks are predicted within 1 pp: where the best savings are decided
    assert np.mean(loss <= 0.01) >= 1 / 3
    # the coverage pick lies beyond the knee band, cheaper than every knee pick, but not at chance
    energy = [problem.energy_rel(g) for g in picks]
    assert len(cover) == 1 and 0.1 * (Q - CHANCE) < cover[0] <= 0.5 * (Q - CHANCE)
    assert energy[5] < min(energy[:5])
    again = sur.suggest(simulated, 6, seed=0, coverage=0)  # coverage=0: all six in the knee band
    assert len(again) >= 3 and np.all(Q - sur.predict(again) <= 0.1 * (Q - CHANCE) * 1.5)
    # and they are cheap for their predicted loss: no random assignment beats one on both
    rand = problem.random_genomes(np.random.default_rng(4), 300)
    re = np.array([problem.energy_rel(g) for g in rand])
    ra = sur.predict(rand)
    for g, a in zip(picks, sur.predict(picks)):
        assert np.mean((re < problem.energy_rel(g) - 1e-9) & (ra > a + 1e-9)) <= 0.02


def test_knapsack_front_is_the_model_front_found_by_enumeration():
    """The dynamic programme gives the least predicted distortion at every energy: on a space small
    enough to enumerate it, no assignment is cheaper and less distorted than a point it returns, and
    every point of the enumerated front has one of equal energy and distortion."""
    problem = SearchProblem.build(
        [f"l{i}" for i in range(4)],
        [100, 40, 300, 7],  # unequal MAC shares, so the layers' energy steps differ
        [["exact"] + [f"m{i}" for i in range(1, 7)]] * 4,
        {"exact": 1.0, **{f"m{i}": 1.0 - 0.13 * i for i in range(1, 7)}},
        exact="exact",
    )
    rng = np.random.default_rng(0)
    dist = np.sort(rng.uniform(0, 1, size=(4, 7)) ** 3, axis=1)
    dist[:, 0] = 0.0
    sur = Surrogate(problem, dist, Q, CHANCE)
    sur.theta = rng.normal(0, 0.5, size=4)  # as if fitted: unequal layer weights and multiplier factors
    sur.phi = rng.normal(0, 0.5, size=len(sur.phi))
    grid = np.stack(np.meshgrid(*[np.arange(7)] * 4, indexing="ij"), axis=-1).reshape(-1, 4)
    e_all, z_all = problem.energy_rel_index(grid), sur.score_index(grid)
    front = sur.knapsack_front(bins=100_000)
    e, z = problem.energy_rel_index(front), sur.score_index(front)
    assert np.all(np.diff(e) > 0) and np.all(np.diff(z) < 0)  # by energy, each less distorted
    for ei, zi in zip(e, z):  # no assignment dominates a returned point
        assert not np.any((e_all <= ei - 1e-9) & (z_all <= zi - 1e-9))
    order = np.lexsort((z_all, e_all))  # by energy, the least distorted first at equal energy
    best = np.minimum.accumulate(z_all[order])
    on_front = order[np.concatenate([[True], z_all[order][1:] < best[:-1]])]
    for i in on_front:  # every enumerated front point is found
        assert np.any((np.abs(e - e_all[i]) < 1e-9) & (np.abs(z - z_all[i]) < 1e-9))


def test_a_batch_the_model_front_cannot_fill_is_topped_up_with_exploratory_picks():
    # 3 layers x 4 multipliers: 64 assignments, the model's front all simulated or excluded already
    problem = _problem(n_layers=3, n_mult=4)
    dist = _distortion(problem)
    everything = problem.from_index(np.stack(np.meshgrid(*[np.arange(4)] * 3), -1).reshape(-1, 3))
    rng = np.random.default_rng(0)
    sim = problem.random_genomes(rng, 12)
    simulated = list(zip(sim, _truth(problem, dist, np.ones(3), sim).tolist()))
    sur = Surrogate(problem, dist, Q, CHANCE)
    sur.fit(sim, [a for _, a in simulated])
    energy = np.array([problem.energy_rel(g) for g in everything])
    acc = sur.predict(everything)
    on_front = {
        g
        for g, e, a in zip(everything, energy, acc)
        if not np.any((energy <= e) & (acc >= a) & ((energy < e) | (acc > a)))
    }
    picks = sur.suggest(simulated, 6, exclude=on_front, seed=0)
    assert len(picks) == 6 and len(set(picks)) == 6
    assert not set(picks) & (on_front | set(sim))
    # every pick the front could not give is exploratory, so none is left to optuna's own sampler
    assert set(sur.last_explore) == set(picks)
