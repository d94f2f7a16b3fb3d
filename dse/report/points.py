"""The points the report shows: every simulated point of the run once, in its group (the search or a
baseline), marked when it is on the search's front, with the legend style of its group."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dse.report.results import RunResults
from dse.search.records import SearchPoint

GROUP_STYLE = {  # group -> (label, marker)
    "search": ("search (all simulated)", {"color": "rgba(70,110,170,0.45)", "size": 7, "symbol": "circle"}),
    "front": (
        "Pareto front",
        {"color": "#d62728", "size": 11, "symbol": "circle", "line": {"color": "white", "width": 1}},
    ),
    "homogeneous": ("homogeneous", {"color": "#ff7f0e", "size": 10, "symbol": "diamond"}),
    "agn": ("AGN-greedy", {"color": "#2ca02c", "size": 13, "symbol": "star"}),
    "random": (
        "random search",
        {"color": "#7f7f7f", "size": 8, "symbol": "x-thin-open", "line": {"width": 2}},
    ),
    "random_with_seeds": (  # summary and hypervolume figure only: its points are shown as the others
        "random search + the seeds",
        {"color": "#17becf", "size": 8, "symbol": "x-thin-open", "line": {"width": 2}},
    ),
}


def group_label(run: RunResults, group: str) -> str:
    """The legend / badge name of a group; under per-layer restrictions the homogeneous baseline is one
    multiplier wherever the layer allows it, not homogeneous, and says so."""
    if group == "homogeneous" and run.search_space.get("layers"):
        return "uniform where allowed"
    return str(GROUP_STYLE.get(group, (group,))[0])


@dataclass(frozen=True)
class PagePoint:
    """A simulated point of the run as the page shows it: its group ("search" or a baseline), whether it
    is on the front, and the label of its legend entry."""

    point: SearchPoint
    group: str
    on_front: bool
    group_label: str

    @property
    def trial(self) -> int | None:
        return self.point.trial

    @property
    def energy_rel(self) -> float:
        return self.point.energy_rel

    @property
    def accuracy(self) -> float:
        if self.point.accuracy is None:
            raise ValueError(f"point of trial {self.trial} is not simulated yet")
        return self.point.accuracy

    @property
    def test_accuracy(self) -> float | None:
        return self.point.test_accuracy

    @property
    def predicted_accuracy(self) -> float | None:
        return self.point.predicted_accuracy

    @property
    def assignment(self) -> dict[str, str]:
        return dict(self.point.assignment)

    @property
    def origin(self) -> str:
        return self.point.origin.to_json()

    def to_json(self) -> dict[str, Any]:
        """What the page's script reads of a point."""
        return {
            "trial": self.trial,
            "group": self.group,
            "group_label": self.group_label,
            "origin": self.origin,
            "energy_rel": self.energy_rel,
            "accuracy": self.accuracy,
            "test_accuracy": self.test_accuracy,
            "predicted_accuracy": self.predicted_accuracy,
            "assignment": self.assignment,
            "on_front": self.on_front,
        }


def origin_label(origin: str) -> str:
    """A point's origin in words ("homogeneous" -> "homogeneous seed", "agn:0.2" -> "AGN seed λ=0.2")."""
    if origin.startswith("agn:"):
        return f"AGN seed λ={origin[4:]}"
    return {
        "exact": "exact seed",
        "homogeneous": "homogeneous seed",
        "surrogate": "surrogate",
        "nsga2": "NSGA-II",
        "random": "random",
        "random-restart": "random restart",
    }.get(origin, origin)


def report_points(run: RunResults) -> list[PagePoint]:
    """The page's points (search, then baselines), each with its group and whether it is on the front."""
    front_keys = {json.dumps(dict(p.assignment), sort_keys=True) for p in run.summary.front}
    points = []
    for g in run.all_points():
        if g.point.accuracy is None:
            continue  # not simulated yet (a running trial)
        key = json.dumps(dict(g.point.assignment), sort_keys=True)
        on_front = g.group == "search" and key in front_keys
        if g.group == "search":
            # the badge and the tooltip name the same thing: a search point and where it came from
            where = "Pareto front" if on_front else "search"
            label = f"{where} · {origin_label(g.point.origin.to_json())}"
        else:
            label = group_label(run, g.group)
        points.append(PagePoint(g.point, g.group, on_front, label))
    return points
