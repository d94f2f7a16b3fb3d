"""The report's figures as plain plotly figure dicts (drawn by `page.js`): the Pareto chart of every
point, the hypervolume history, surrogate vs simulated accuracy, the learned AGN tolerances, and the
multiplier library's error vs energy."""

from __future__ import annotations

import fnmatch
import html
from typing import Any

from dse.multipliers.core import Multiplier
from dse.multipliers.library import Library
from dse.nn.compensation import split_variant
from dse.report.points import GROUP_STYLE, PagePoint, group_label
from dse.report.results import BASELINE_NAMES, RunResults
from dse.util import UserError

Figure = dict[str, Any]


FOCUS_PP = 10.0  # the Pareto chart opens showing accuracies down to this many pp below quantized


def esc(text: object) -> str:
    """Text for plotly's HTML-like labels (hover text, legend names, tick labels): every name a run shows
    (layers, multipliers, groups) comes from files, so all of it is escaped; only dse's own markup is not."""
    return html.escape(str(text), quote=True)


def pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def _hover(p: PagePoint, q: float | None, max_layers: int = 10) -> str:
    """The hover text of one point: dse's <b>/<br> markup around escaped text (a layer or multiplier
    name that starts with "<b>" is shown as text, never passed to plotly raw)."""
    head = f"<b>{'trial ' + str(p.trial) if p.trial is not None else 'point'}</b> ({esc(p.group_label)})"
    acc = p.accuracy
    loss = "" if q is None or acc is None else f" ({100 * (acc - q):+.2f} pp)"
    lines = [
        head,
        esc(f"saving {100 * (1 - p.energy_rel):.1f} %, accuracy {pct(acc)}{loss}"),
    ]
    if p.test_accuracy is not None:
        lines.append(esc(f"test accuracy {pct(p.test_accuracy)}"))
    items = list(p.assignment.items())
    lines += [f"{esc(layer)}: {esc(mult)}" for layer, mult in items[:max_layers]]
    if len(items) > max_layers:
        lines.append(esc(f"… {len(items) - max_layers} more layers"))
    return "<br>".join(lines)


def _scatter(
    points: list[PagePoint],
    indices: list[int],
    group: str,
    q: float | None,
    mode: str = "markers",
    label: str | None = None,
) -> Figure:
    default_label, marker = GROUP_STYLE[group]
    label = label or default_label
    pts = [points[i] for i in indices]
    return {
        "type": "scatter",
        "mode": mode,
        "name": f"{esc(label)} ({len(pts)})",
        "x": [100 * (1 - p.energy_rel) for p in pts],
        "y": [100 * p.accuracy for p in pts],
        "customdata": indices,
        "text": [_hover(p, q) for p in pts],
        "hovertemplate": "%{text}<extra></extra>",
        "marker": marker,
        **({"line": {"color": marker["color"], "width": 2}} if "lines" in mode else {}),
    }


def pareto_figure(run: RunResults, points: list[PagePoint]) -> Figure:
    q = run.quant_accuracy
    traces = []
    search = [i for i, p in enumerate(points) if p.group == "search"]
    traces.append(_scatter(points, search, "search", q))
    for name in BASELINE_NAMES:
        idx = [i for i, p in enumerate(points) if p.group == name]
        if idx:
            traces.append(_scatter(points, idx, name, q, label=points[idx[0]].group_label))
    front = sorted((i for i, p in enumerate(points) if p.on_front), key=lambda i: points[i].energy_rel)
    traces.append(_scatter(points, front, "front", q, mode="lines+markers"))
    shapes, annotations = [], []
    if q is not None:
        shapes = [
            {
                "type": "rect",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": 100 * q - 1,
                "y1": 100 * q,
                "fillcolor": "rgba(44,160,44,0.10)",
                "line": {"width": 0},
                "layer": "below",
            },
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": 100 * q,
                "y1": 100 * q,
                "line": {"color": "#2ca02c", "dash": "dash", "width": 1.5},
            },
        ]
        # legend entries for the line and the band (line-only traces without data: no markers drawn),
        # inserted before the front, which stays the topmost trace
        legend_only = [
            (f"quantized (exact) {100 * q:.2f} %", {"color": "#2ca02c", "dash": "dash", "width": 1.5}),
            ("within 1 pp", {"color": "rgba(44,160,44,0.25)", "width": 10}),
        ]
        for name, line in legend_only:
            traces.insert(
                -1,
                {
                    "type": "scatter",
                    "mode": "lines",
                    "x": [None],
                    "y": [None],
                    "hoverinfo": "skip",
                    "name": name,
                    "line": line,
                },
            )
    accs = [100 * p.accuracy for p in points]
    savings = [100 * (1 - p.energy_rel) for p in points]
    lo = min(accs + ([100 * q - 1.5] if q is not None else []))
    hi = max(accs + ([100 * q] if q is not None else []))
    hidden = []
    if q is not None and lo < 100 * q - FOCUS_PP:
        # the decisions happen near the quantized accuracy: open zoomed there, the rest one click away
        lo = 100 * q - FOCUS_PP
        hidden.append(f"{sum(a < lo for a in accs)} points below {lo:.1f} %")
    # designs costing more than exact (negative saving) would stretch the axis far left: cut at 0
    x_lo, x_hi = min(savings + [0.0]), max(savings + [1.0])
    if x_lo < 0:
        hidden.append(f"{sum(s < 0 for s in savings)} costing more than exact")
        x_lo = 0.0
    x_pad = 0.03 * (x_hi - x_lo)
    if hidden:
        # above the plot area (under the title), never over a marker
        annotations.append(
            {
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": 1.0,
                "xanchor": "left",
                "yanchor": "bottom",
                "text": f"not in view: {esc(', '.join(hidden))}; autoscale (modebar) or drag to zoom out",
                "showarrow": False,
                "font": {"color": "#888", "size": 10},
            }
        )
    pad = max(0.5, 0.05 * (hi - lo))
    return {
        "id": "pareto",
        "data": traces,
        "layout": {
            # the title sits in the page (a card heading), where the hover box cannot cover it
            "xaxis": {
                "title": {"text": "multiplication energy saving vs exact (%)"},
                "ticksuffix": " %",
                "zeroline": False,
                "range": [x_lo - x_pad, x_hi + x_pad],
            },
            "yaxis": {
                "title": {"text": "accuracy, behavioural simulation (%)"},
                "ticksuffix": " %",
                "range": [lo - pad, hi + pad],
            },
            "hovermode": "closest",
            "hoverlabel": {"font": {"size": 11}},
            "shapes": shapes,
            "annotations": annotations,
            "legend": {"orientation": "h", "y": -0.18},
            "margin": {"t": 30, "r": 20, "b": 40, "l": 70},
            "height": 560,
        },
    }


def hypervolume_figure(run: RunResults) -> Figure:
    hist = run.summary.hypervolume_history
    fig = {
        "id": "hypervolume",
        "layout": {
            "title": {"text": "Hypervolume over simulations"},
            "xaxis": {"title": {"text": "simulations"}},
            "yaxis": {"title": {"text": "hypervolume (ref. energy_rel 1, acc. 0)"}},
            "height": 360,
            "margin": {"t": 50, "r": 20, "b": 50, "l": 70},
            "legend": {"orientation": "h", "y": -0.25},
        },
    }
    if not hist:
        return {**fig, "empty": "Hypervolume history: not written by the search yet."}
    # x: the budget spent (full-split simulations; candidates rejected early cost their slice) where the
    # search recorded it, else the candidates
    by_budget = all(h.simulations is not None for h in hist)
    x = [float(h.simulations) if by_budget and h.simulations is not None else h.evaluations for h in hist]
    if by_budget:
        fig["layout"]["xaxis"] = {"title": {"text": "budget spent (full validation-split simulations)"}}
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "search",
            "x": x,
            "y": [h.hypervolume for h in hist],
            "line": {"color": "#d62728", "width": 2.5, "shape": "hv"},
        }
    ]
    for origin, hv in run.summary.hypervolume_by_origin.items():  # each origin's points alone
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"{esc(origin)} points alone (final)",
                "x": [min(x), max(x)],
                "y": [hv] * 2,
                "line": {"dash": "dot", "width": 1},
            }
        )
    for name, base in run.summary.baselines.items():
        if base.hypervolume is not None and base.points:
            label = GROUP_STYLE.get(name, (name, {"color": "#555"}))
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{esc(group_label(run, name))} (final)",
                    "x": [min(x), max(x)],
                    "y": [base.hypervolume] * 2,
                    "line": {"dash": "dash", "color": label[1]["color"]},
                }
            )
    return {**fig, "data": data}


def surrogate_figure(run: RunResults, points: list[PagePoint]) -> Figure:
    pts = [p for p in points if p.group == "search" and p.predicted_accuracy is not None]
    tau = run.summary.surrogate_kendall_tau  # out of sample: predictions made before each simulation
    title = "Surrogate (predicted before each simulation) vs simulated accuracy" + (
        f" (out-of-sample Kendall τ = {tau:.3f})" if tau is not None else ""
    )
    fig = {
        "id": "surrogate",
        "layout": {
            "title": {"text": title},
            "height": 360,
            "margin": {"t": 50, "r": 20, "b": 50, "l": 70},
            "xaxis": {"title": {"text": "surrogate predicted accuracy (%)"}},
            "yaxis": {"title": {"text": "simulated accuracy (%)"}},
            "showlegend": False,
        },
    }
    if not pts:
        return {**fig, "empty": "Surrogate vs simulated: no point carries a surrogate prediction yet."}
    xs = [100 * (p.predicted_accuracy or 0.0) for p in pts]  # all set (filtered above)
    ys = [100 * p.accuracy for p in pts]
    lo, hi = min(xs + ys), max(xs + ys)
    return {
        **fig,
        "data": [
            {
                "type": "scatter",
                "mode": "lines",
                "x": [lo, hi],
                "y": [lo, hi],
                "line": {"color": "#aaa", "dash": "dot"},
                "hoverinfo": "skip",
            },
            {
                "type": "scatter",
                "mode": "markers",
                "x": xs,
                "y": ys,
                "marker": {"color": "#1f77b4", "size": 6, "opacity": 0.7},
                "text": [f"trial {p.trial}" for p in pts],
                "hovertemplate": "%{text}<br>surrogate %{x:.2f} %<br>simulated %{y:.2f} %<extra></extra>",
            },
        ],
    }


def tolerance_figure(run: RunResults) -> Figure:
    names = [esc(layer.name) for layer in run.layers]
    fig = {
        "id": "tolerance",
        "layout": {
            "title": {"text": "Learned per-layer tolerance (AGN σ_l)"},
            "barmode": "group",
            "height": 360,
            "margin": {"t": 50, "r": 20, "b": 60, "l": 70},
            "xaxis": {"title": {"text": "layer"}},
            "yaxis": {"title": {"text": "|σ_l| relative to std(output)"}},
            "legend": {"orientation": "h", "y": -0.3},
        },
    }
    if not run.agn:
        return {
            **fig,
            "empty": "Learned tolerances: agn/result.json not found (written by `dse search` / `dse agn`).",
        }
    data = []
    for a in run.agn:
        acc = "" if a.accuracy is None else f", {100 * a.accuracy:.2f} %"
        data.append(
            {
                "type": "bar",
                "name": f"λ = {a.lam:g}{acc}",
                "x": names,
                "y": [abs(float(a.sigma_rel[n.name])) if n.name in a.sigma_rel else None for n in run.layers],
                "hovertemplate": "%{x}: σ_l = %{y:.3f}<extra>λ " + f"{a.lam:g}" + "</extra>",
            }
        )
    return {**fig, "data": data}


def library_figure(run: RunResults, library: Library | None, points: list[PagePoint]) -> Figure:
    fig = {
        "id": "library",
        "layout": {
            "title": {"text": "Multiplier library: error vs energy (exact = 1, not shown)"},
            "height": 360,
            "margin": {"t": 50, "r": 20, "b": 50, "l": 70},
            "xaxis": {"title": {"text": "energy relative to exact"}},
            # labels at powers of ten only (plotly's default on a short log range labels 2 and 5 too)
            "yaxis": {
                "title": {"text": "mean relative error, MRE (%)"},
                "type": "log",
                "dtick": 1,
                "exponentformat": "power",
            },
            "legend": {"orientation": "h", "y": -0.25},
        },
    }
    if library is None:
        return {**fig, "empty": "Multiplier library: could not be loaded."}
    used = {split_variant(m)[0] for p in points for m in p.assignment.values()}  # "NAME+bc": NAME
    front_used = {split_variant(m)[0] for p in points if p.on_front for m in p.assignment.values()}
    patterns = run.search_space.get("multipliers") or []
    fmt = run.search_space.get("format")
    signed = None if fmt is None else fmt == "signed"
    if signed is None and used:
        try:
            signed = library.get(sorted(used)[0]).signed
        except UserError:
            signed = None
    # exact multipliers (MRE 0) have no place on a log axis; the title says so
    mults = [m for m in library if (signed is None or m.signed == signed) and not m.is_exact]
    if patterns:
        in_space = [
            m for m in mults if any(fnmatch.fnmatchcase(m.name, pat) for pat in patterns) or m.name in used
        ]
        mults = in_space or mults
    groups: dict[str, list[Multiplier]] = {"on the front": [], "used by other points": [], "not used": []}
    for m in mults:
        key = (
            "on the front"
            if m.name in front_used
            else "used by other points"
            if m.name in used
            else "not used"
        )
        groups[key].append(m)
    colors = {"on the front": "#d62728", "used by other points": "#1f77b4", "not used": "#bbb"}
    data = []
    for key, ms in groups.items():
        if not ms:
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"{key} ({len(ms)})",
                "x": [m.energy_rel for m in ms],
                "y": [m.metrics["mre_percent"] for m in ms],
                "text": [
                    f"<b>{esc(m.name)}</b><br>energy_rel {m.energy_rel:.3f}<br>MAE {m.metrics['mae_percent']:.4f} %"
                    f"<br>MRE {m.metrics['mre_percent']:.3f} %<br>WCE {m.metrics['wce_percent']:.3f} %"
                    f"<br>bias {m.metrics['mean_error']:.1f}"
                    for m in ms
                ],
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {"color": colors[key], "size": 8},
            }
        )
    return (
        {**fig, "data": data}
        if data
        else {**fig, "empty": "Multiplier library: no multiplier of this format."}
    )
