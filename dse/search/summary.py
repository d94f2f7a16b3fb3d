"""summary.json (docs/ARCHITECTURE.md "summary.json"): the front, every simulated point, the baselines
(homogeneous front, AGN-greedy points, random search with the same number of simulations), hypervolumes,
and every front / baseline point re-measured on the disjoint test split."""

from __future__ import annotations

import numpy as np

from dse.search.baselines import agn_points, homogeneous_points, random_points
from dse.search.pareto import hypervolume, pareto_mask

SCHEMA_VERSION = 1


def point(problem, g, accuracy, *, trial=None, predicted=None, origin="", test_accuracy=None) -> dict:
    return {
        "trial": trial,
        "energy_rel": problem.energy_rel(g),
        "accuracy": float(accuracy),
        "test_accuracy": test_accuracy,
        "assignment": problem.assignment(g),
        "predicted_accuracy": None if predicted is None else float(predicted),
        "origin": origin,
    }


def hypervolume_history(points: list[dict], step: int) -> list[dict]:
    """Hypervolume of the search's points after every `step` simulations (trial order), and at the end."""
    pts = sorted(points, key=lambda p: p["trial"] if p["trial"] is not None else -1)
    out = []
    marks = list(range(step, len(pts), step)) + [len(pts)]
    for n in marks:
        sub = pts[:n]
        out.append(
            {
                "evaluations": n,
                "hypervolume": hypervolume([p["energy_rel"] for p in sub], [p["accuracy"] for p in sub]),
            }
        )
    return out


def _hv(points: list[dict]) -> float:
    return hypervolume([p["energy_rel"] for p in points], [p["accuracy"] for p in points])


def _front(points: list[dict]) -> list[dict]:
    if not points:
        return []
    mask = pareto_mask([p["energy_rel"] for p in points], [p["accuracy"] for p in points])
    return sorted([p for p, m in zip(points, mask) if m], key=lambda p: p["energy_rel"])


def build_summary(
    setup, raw_points: list[dict], seeds, budget: int, seed: int, random_baseline: bool = True
) -> dict:
    problem, cache = setup.problem, setup.cache
    pts = [
        point(
            problem,
            p["genome"],
            p["accuracy"],
            trial=p["trial"],
            predicted=p["predicted_accuracy"],
            origin=p["origin"],
        )
        for p in raw_points
    ]
    genome_of = {id(p): g["genome"] for p, g in zip(pts, raw_points)}
    front = _front(pts)
    baselines = {
        "homogeneous": homogeneous_points(problem, cache),
        "agn": agn_points(problem, cache, setup.agn),
    }
    if random_baseline:
        baselines["random"] = random_points(problem, cache, len(pts), seed)
    # re-measure every front and baseline point on the test split
    to_test = [genome_of[id(p)] for p in front]
    for b in baselines.values():
        to_test += [problem.genome(p["assignment"]) for p in b]
    q_val = cache.evaluate([setup.quant_genome], "val")[0]
    q_test = cache.evaluate([setup.quant_genome], "test")[0]
    test_acc = dict(zip(to_test, cache.evaluate(to_test, "test")))
    for p in front:
        v = test_acc.get(genome_of[id(p)])
        p["test_accuracy"] = None if isinstance(v, BaseException) else v
    for b in baselines.values():
        for p in b:
            v = test_acc.get(problem.genome(p["assignment"]))
            p["test_accuracy"] = None if isinstance(v, BaseException) else v
    quant_accuracy = float(getattr(setup.prepared, "quant_accuracy", q_val))
    tau = None
    if setup.surrogate is not None and len(pts) >= 3:
        genomes = [genome_of[id(p)] for p in pts]
        accs = [p["accuracy"] for p in pts]
        setup.surrogate.fit(genomes, accs)
        tau = setup.surrogate.kendall_tau(genomes, accs)
    layers = []
    for info in getattr(setup.prepared, "layers", []):
        layers.append(
            {
                "name": info.name,
                "kind": info.kind,
                "macs": int(info.macs),
                "fan_in": int(info.fan_in),
                "weight_shape": list(info.weight_shape),
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "study": "",
        "quant_accuracy": quant_accuracy,
        "quant_test_accuracy": None if isinstance(q_test, BaseException) else float(q_test),
        "quant_accuracy_simulated": None if isinstance(q_val, BaseException) else float(q_val),
        "evaluations": len(pts),
        "budget": budget,
        "seconds": 0.0,
        "simulations_per_second": None,
        "outside_simulation_share": None,
        "surrogate_kendall_tau": tau,
        "hypervolume": _hv(pts),
        "hypervolume_history": hypervolume_history(
            pts, max(1, int(getattr(setup.prepared.study.search, "population", 24)))
        ),
        "layers": layers,
        "front": front,
        "points": pts,
        "baselines": {k: {"hypervolume": _hv(v), "points": v} for k, v in baselines.items()},
        "targets": targets(front, baselines, quant_accuracy, q_test),
    }


def best_saving_within(points: list[dict], quant_accuracy: float, max_loss: float = 0.01) -> float:
    """Best energy saving (1 − energy_rel) among points within `max_loss` of the quantized accuracy."""
    ok = [1.0 - p["energy_rel"] for p in points if p["accuracy"] >= quant_accuracy - max_loss]
    return max(ok) if ok else 0.0


def targets(front, baselines, q, q_test) -> dict:
    """The issue's target figures, computed on the run: saving ratios and the validation→test gap."""
    best = best_saving_within(front, q)
    homo = best_saving_within(baselines["homogeneous"], q)
    agn = best_saving_within(baselines["agn"], q) if baselines.get("agn") else None
    gaps = [
        (q_test - p["test_accuracy"]) - (q - p["accuracy"])
        for p in front
        if p.get("test_accuracy") is not None and not isinstance(q_test, BaseException)
    ]
    return {
        "best_saving_within_1pp": best,
        "best_homogeneous_saving_within_1pp": homo,
        "best_agn_saving_within_1pp": agn,
        "saving_ratio_vs_homogeneous": best / homo if homo > 0 else None,
        "median_test_minus_val_loss": float(np.median(gaps)) if gaps else None,
    }
