"""The search's typed records keep summary.json exactly as written: origins round-trip to the same strings,
a summary read back writes the same JSON (keys, order, values), a simulation failure is one line."""

from __future__ import annotations

import json

import pytest
from synthetic import synthetic_problem

from dse.search.records import Origin, SearchPoint, SimulationFailure, Summary
from dse.util import UserError


@pytest.mark.parametrize(
    "text",
    ["exact", "agn:0.5", "agn:0.05", "agn:1e-05", "surrogate", "homogeneous", "nsga2", "random-restart"],
)
def test_origin_json_is_the_string_the_search_writes(text):
    assert Origin.from_json(text).to_json() == text


def test_agn_origin_carries_its_lambda():
    o = Origin.from_json("agn:0.2")
    assert o.kind == "agn" and o.lam == 0.2 and o == Origin.agn(0.2)
    assert Origin.from_json("nsga2") == Origin("nsga2") and Origin("nsga2").lam is None


def test_point_genome_is_its_assignment_in_layer_order():
    problem = synthetic_problem(3, 4)
    g = ("m1", "exact", "m3")
    p = problem.point(g, 0.9, trial=4, origin=Origin("nsga2"))
    assert p.genome == g and p.energy_rel == problem.energy_rel(g)
    assert list(p.to_json()) == [
        "trial",
        "energy_rel",
        "accuracy",
        "test_accuracy",
        "assignment",
        "predicted_accuracy",
        "origin",
        "images",
        "partial",
    ]
    assert SearchPoint.from_json(json.loads(json.dumps(p.to_json()))) == p


def test_summary_round_trips_to_the_same_json():
    problem = synthetic_problem(2, 3)
    pts = [
        problem.point(g, 0.9 - 0.1 * i, trial=i, origin=Origin("nsga2"))
        for i, g in enumerate(problem.homogeneous())
    ]
    doc = {
        "schema_version": 1,
        "study": "s",
        "quant_accuracy": 0.95,
        "quant_test_accuracy": 0.94,
        "quant_accuracy_simulated": 0.95,
        "evaluations": len(pts),
        "budget": 10,
        "seconds": 1.5,
        "simulations_per_second": 2.0,
        "outside_simulation_share": 0.1,
        "surrogate_kendall_tau": 0.7,
        "surrogate_kendall_tau_in_sample": 0.8,
        "hypervolume": 0.5,
        "hypervolume_by_origin": {"homogeneous": 0.4, "surrogate": 0.45},
        "hypervolume_history": [{"evaluations": 2, "hypervolume": 0.5, "simulations": 1.5}],
        "simulated_images": 1200,
        "simulated_images_per_front_point": 1200.0,
        "rejected_early": 1,
        "budget_share_to_95pct_hypervolume": 0.15,
        "layers": [
            {"name": n, "kind": "conv", "macs": m, "fan_in": 9, "weight_shape": [4, 1, 3, 3], "act_rule": ""}
            for n, m in zip(problem.layers, problem.macs)
        ],
        "front": [pts[0].to_json()],
        "points": [p.to_json() for p in pts],
        "baselines": {
            "homogeneous": {
                "hypervolume": 0.4,
                "best_saving_within_1pp": 0.2,
                "best_saving_within_1pp_test": 0.1,
                "simulated_images": 400,
                "points": [pts[1].to_json()],
            }
        },
        "targets": {
            "best_saving_within_1pp": 0.0,
            "best_homogeneous_saving_within_1pp": 0.0,
            "best_agn_saving_within_1pp": None,
            "saving_ratio_vs_homogeneous": None,
            "median_test_minus_val_loss": None,
            "best_saving_within_1pp_test": 0.3,
            "best_homogeneous_saving_within_1pp_test": 0.2,
            "saving_ratio_vs_homogeneous_test": 1.5,
        },
        "stage_seconds": {"prepare": 1.0, "search": 0.5},
        "storage": "sqlite:///x.db",
        "optuna_study": "s",
        "fallbacks": [{"stage": "agn", "error": "RuntimeError: loss nan", "effect": "no AGN seeds"}],
        "requeued_trials": 2,
    }
    text = json.dumps(doc, indent=2)
    assert json.dumps(Summary.from_json(json.loads(text)).to_json(), indent=2) == text


def test_summary_without_layers_is_refused_naming_the_field():
    with pytest.raises(UserError, match="layers"):
        Summary.from_json({"points": []}, where="summary.json")


def test_simulation_failure_is_one_line_of_type_and_message():
    f = SimulationFailure.of(ValueError("simulation returned accuracy nan\nmore"))
    assert str(f) == "ValueError: simulation returned accuracy nan"
