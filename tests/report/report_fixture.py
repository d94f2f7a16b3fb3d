"""A synthetic but realistic run directory (what `dse search` leaves behind) and a small multiplier library,
shared by the report / export / browser tests and the crafted-checkpoint tests. Helpers only, hence no
`test_` prefix (a test file without tests is a defect)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dse.multipliers import Multiplier, exact_table
from dse.util import UserError

LAYERS = [
    {"name": "features.0", "kind": "conv", "macs": 20736, "fan_in": 9, "weight_shape": [16, 1, 3, 3]},
    {"name": "features.3", "kind": "conv", "macs": 41472, "fan_in": 144, "weight_shape": [32, 16, 3, 3]},
    {"name": "classifier.1", "kind": "linear", "macs": 8192, "fan_in": 512, "weight_shape": [16, 512]},
    {"name": "classifier.3", "kind": "linear", "macs": 160, "fan_in": 16, "weight_shape": [10, 16]},
]
QUANT_ACC = 0.9712
N_POINTS = 60


class FakeLibrary:
    """The `Library` contract (`get`, `names`, iteration) over a fixed list of multipliers."""

    def __init__(self, multipliers: list[Multiplier]):
        self._by_name = {m.name: m for m in multipliers}

    def get(self, name: str) -> Multiplier:
        if name not in self._by_name:
            raise UserError(f"multiplier {name!r}: not in the library")
        return self._by_name[name]

    def names(self) -> list[str]:
        return list(self._by_name)

    def __iter__(self):
        return iter(self._by_name.values())


def truncated(k: int) -> Multiplier:
    """Unsigned multiplier that drops the k low bits of the exact product (always errs low)."""
    lut = (exact_table(False) >> k) << k
    return Multiplier(
        f"trunc_{k}", False, lut, energy_rel=1.0 - 0.11 * k, energy_method="synthetic", params={"k": k}
    )


def fake_library(library_dir: str | None = None) -> FakeLibrary:
    exact = Multiplier("exact_u8", False, exact_table(False), 1.0, "definition")
    return FakeLibrary([exact] + [truncated(k) for k in range(1, 8)])


MULTS = ["exact_u8"] + [f"trunc_{k}" for k in range(1, 8)]


def _energy(assign: dict[str, str], lib: FakeLibrary) -> float:
    total = sum(layer["macs"] for layer in LAYERS)
    return sum(layer["macs"] / total * lib.get(assign[layer["name"]]).energy_rel for layer in LAYERS)


def _accuracy(assign: dict[str, str], rng: np.random.Generator) -> float:
    sens = {"features.0": 0.0012, "features.3": 0.0005, "classifier.1": 0.0002, "classifier.3": 0.002}
    loss = sum(
        sens[n] * (int(m.split("_")[1]) if m.startswith("trunc") else 0) ** 1.6 for n, m in assign.items()
    )
    acc = QUANT_ACC - loss + rng.normal(0, 0.001)
    return float(np.clip(np.round(acc * 2500) / 2500, 0.05, 1.0))  # k / 2500 validation images


def _front(points: list[dict]) -> list[dict]:
    front = []
    for p in points:
        dominated = any(
            q["energy_rel"] <= p["energy_rel"]
            and q["accuracy"] >= p["accuracy"]
            and (q["energy_rel"] < p["energy_rel"] or q["accuracy"] > p["accuracy"])
            for q in points
        )
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p["energy_rel"])


def make_run_dir(
    run_dir: Path, *, with_predictions: bool = True, with_agn: bool = True, seed: int = 0
) -> dict:
    """Write a finished-search run directory; return its summary."""
    run_dir = Path(run_dir)
    lib = fake_library()
    rng = np.random.default_rng(seed)
    names = [layer["name"] for layer in LAYERS]
    points, seen = [], set()
    trial = 0
    while len(points) < N_POINTS:
        if trial < len(MULTS):  # the seeded first generation: homogeneous assignments
            assign = {n: MULTS[trial] for n in names}
        else:
            assign = {n: MULTS[int(rng.integers(0, 6 if n == "features.0" else len(MULTS)))] for n in names}
        key = tuple(assign.values())
        if key in seen:
            continue
        seen.add(key)
        acc = _accuracy(assign, rng)
        points.append(
            {
                "trial": trial,
                "energy_rel": _energy(assign, lib),
                "accuracy": acc,
                "test_accuracy": float(np.round((acc + rng.normal(-0.002, 0.003)) * 2500) / 2500),
                "assignment": assign,
                "predicted_accuracy": float(acc + rng.normal(0, 0.004)) if trial >= 3 else None,
                "origin": "homogeneous" if trial < len(MULTS) else "nsga2",
            }
        )
        trial += 1
    front = _front(points)
    homog = [p for p in points if p["origin"] == "homogeneous"]
    random_pts = []
    for _ in range(12):
        assign = {n: MULTS[int(rng.integers(0, len(MULTS)))] for n in names}
        acc = _accuracy(assign, rng)
        random_pts.append(
            {
                "trial": None,
                "energy_rel": _energy(assign, lib),
                "accuracy": acc,
                "test_accuracy": None,
                "assignment": assign,
                "predicted_accuracy": None,
                "origin": "random",
            }
        )
    agn_assign = [
        {
            "features.0": "trunc_1",
            "features.3": "trunc_3",
            "classifier.1": "trunc_4",
            "classifier.3": "trunc_1",
        },
        {
            "features.0": "trunc_2",
            "features.3": "trunc_4",
            "classifier.1": "trunc_5",
            "classifier.3": "trunc_2",
        },
    ]
    agn_pts = []
    for lam, assign in zip([0.05, 0.2], agn_assign):
        acc = _accuracy(assign, rng)
        agn_pts.append(
            {
                "trial": None,
                "energy_rel": _energy(assign, lib),
                "accuracy": acc,
                "test_accuracy": acc - 0.001,
                "assignment": assign,
                "predicted_accuracy": None,
                "origin": f"agn:{lam:g}",  # as the search writes it
            }
        )
    hist = [
        {"evaluations": n, "hypervolume": 0.6 + 0.25 * (1 - np.exp(-n / 15))}
        for n in range(8, N_POINTS + 1, 4)
    ]
    summary = {
        "schema_version": 1,
        "study": "synthetic_digits",
        "quant_accuracy": QUANT_ACC,
        "quant_test_accuracy": 0.9680,
        "evaluations": N_POINTS,
        "seconds": 41.5,
        "simulations_per_second": N_POINTS / 41.5,
        "outside_simulation_share": 0.12,
        "surrogate_kendall_tau": 0.71,
        "hypervolume": hist[-1]["hypervolume"],
        "hypervolume_history": hist,
        "layers": LAYERS,
        "front": front,
        "points": points,
        "baselines": {
            "homogeneous": {"hypervolume": 0.7, "points": homog},
            "agn": {"hypervolume": 0.62, "points": agn_pts},
            "random": {"hypervolume": 0.75, "points": random_pts},
        },
    }
    (run_dir / "prepare").mkdir(parents=True, exist_ok=True)
    (run_dir / "prepare" / "qat.pt").write_bytes(b"synthetic checkpoint")
    (run_dir / "splits.json").write_text(json.dumps({"seed": 0, "val": 2500, "test": 2500}))
    (run_dir / "study.toml").write_text(
        'name = "synthetic_digits"\n'
        '[search_space]\nname = "unsigned_sm"\nformat = "unsigned"\nweight_scheme = "sign-magnitude"\n'
        'multipliers = ["exact_u8", "trunc_*"]\n'
        '[model]\nname = "digits_cnn"\n[data]\nname = "digits"\n[train]\nper_channel = true\n'
    )
    if with_predictions:
        sigma = [
            [0.0 if m == "exact_u8" else 0.01 * 2 ** int(m.split("_")[1]) * (i + 1) for m in MULTS]
            for i in range(len(LAYERS))
        ]
        mean = [[0.0 if m == "exact_u8" else -0.5 * s for m, s in zip(MULTS, row)] for row in sigma]
        (run_dir / "profiles").mkdir(exist_ok=True)
        table = {  # {predictor: table}, as dse.errors.predict writes it
            "key": "synthetic",
            "predictor": "sampled",
            "layers": names,
            "multipliers": MULTS,
            "sigma": sigma,
            "mean": mean,
            "output_std": [1.0, 2.0, 3.0, 4.0],
            "output_rms": [1.0, 2.0, 3.0, 4.0],
            "energies": [1.0 - 0.11 * (int(m.split("_")[1]) if m != "exact_u8" else 0) for m in MULTS],
            "macs": [layer["macs"] for layer in LAYERS],
            "seconds": 0.0,
        }
        (run_dir / "profiles" / "predictions.json").write_text(json.dumps({"sampled": table}))
    if with_agn:
        (run_dir / "agn").mkdir(exist_ok=True)
        results = []
        for lam, assign, p in zip([0.05, 0.2], agn_assign, agn_pts):
            sig = {n: (0.05 + 0.1 * i) * (1 + 3 * lam) for i, n in enumerate(names)}
            results.append(
                {
                    "lam": lam,
                    "sigma_rel": sig,
                    "tolerance": {n: s * (i + 1) for i, (n, s) in enumerate(sig.items())},
                    "assignment": assign,
                    "energy_rel": p["energy_rel"],
                    "accuracy": p["accuracy"],
                }
            )
        (run_dir / "agn" / "result.json").write_text(json.dumps({"results": results}))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
