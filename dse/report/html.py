"""`dse report`: one self-contained HTML page (plotly.js embedded, works offline from a file:// URL).

Figures are plain plotly figure dicts built here; `page.js` draws them and handles clicks. Every point's
configuration JSON is embedded as the exact text `dse export --trial N` writes (`config_text`), so the
page's download and the CLI's file are byte-identical.
"""

from __future__ import annotations

import fnmatch
import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from dse import __version__
from dse.report.config import build_config, config_text
from dse.report.run import BASELINE_NAMES, RunData, load_run
from dse.util import UserError, atomic_write_text, to_jsonable

FOCUS_PP = 10.0  # the Pareto chart opens showing accuracies down to this many pp below quantized

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
}


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def _hover(p: dict[str, Any], q: float | None, max_layers: int = 14) -> str:
    head = f"<b>{'trial ' + str(p['trial']) if p.get('trial') is not None else 'point'}</b> ({p.get('origin') or p['group']})"
    acc = p.get("accuracy")
    loss = "" if q is None or acc is None else f" ({100 * (acc - q):+.2f} pp)"
    lines = [
        head,
        f"saving {100 * (1 - p['energy_rel']):.1f} %, accuracy {_pct(acc)}{loss}",
    ]
    if p.get("test_accuracy") is not None:
        lines.append(f"test accuracy {_pct(p['test_accuracy'])}")
    items = list((p.get("assignment") or {}).items())
    lines += [f"{layer}: {mult}" for layer, mult in items[:max_layers]]
    if len(items) > max_layers:
        lines.append(f"… {len(items) - max_layers} more layers")
    return "<br>".join(
        html.escape(line, quote=False) if not line.startswith("<b>") else line for line in lines
    )


def _scatter(
    points: list[dict], indices: list[int], group: str, q: float | None, mode: str = "markers"
) -> dict:
    label, marker = GROUP_STYLE[group]
    pts = [points[i] for i in indices]
    return {
        "type": "scatter",
        "mode": mode,
        "name": f"{label} ({len(pts)})",
        "x": [100 * (1 - p["energy_rel"]) for p in pts],
        "y": [100 * p["accuracy"] for p in pts],
        "customdata": indices,
        "text": [_hover(p, q) for p in pts],
        "hovertemplate": "%{text}<extra></extra>",
        "marker": marker,
        **({"line": {"color": marker["color"], "width": 2}} if "lines" in mode else {}),
    }


def _pareto_figure(run: RunData, points: list[dict]) -> dict:
    q = run.quant_accuracy
    traces = []
    search = [i for i, p in enumerate(points) if p["group"] == "search"]
    traces.append(_scatter(points, search, "search", q))
    for name in BASELINE_NAMES:
        idx = [i for i, p in enumerate(points) if p["group"] == name]
        if idx:
            traces.append(_scatter(points, idx, name, q))
    front = sorted(
        (i for i, p in enumerate(points) if p.get("on_front")), key=lambda i: points[i]["energy_rel"]
    )
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
    accs = [100 * p["accuracy"] for p in points]
    lo = min(accs + ([100 * q - 1.5] if q is not None else []))
    hi = max(accs + ([100 * q] if q is not None else []))
    if q is not None and lo < 100 * q - FOCUS_PP:
        # the decisions happen near the quantized accuracy: open zoomed there, the rest one click away
        lo = 100 * q - FOCUS_PP
        below = sum(a < lo for a in accs)
        annotations.append(
            {
                "xref": "paper",
                "yref": "paper",
                "x": 1,
                "y": 0,
                "xanchor": "right",
                "yanchor": "bottom",
                "text": f"{below} points below {lo:.1f} % not in view: autoscale (modebar) or drag to zoom out",
                "showarrow": False,
                "font": {"color": "#888", "size": 10},
            }
        )
    pad = max(0.5, 0.05 * (hi - lo))
    return {
        "id": "pareto",
        "data": traces,
        "layout": {
            "title": {"text": "Energy saving vs accuracy (validation split): click a point"},
            "xaxis": {
                "title": {"text": "multiplication energy saving vs exact (%)"},
                "ticksuffix": " %",
                "zeroline": False,
            },
            "yaxis": {
                "title": {"text": "accuracy, behavioural simulation (%)"},
                "ticksuffix": " %",
                "range": [lo - pad, hi + pad],
            },
            "hovermode": "closest",
            "shapes": shapes,
            "annotations": annotations,
            "legend": {"orientation": "h", "y": -0.18},
            "margin": {"t": 50, "r": 20, "b": 40, "l": 70},
            "height": 560,
        },
    }


def _hypervolume_figure(run: RunData) -> dict:
    hist = run.summary.get("hypervolume_history") or []
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
    x = [h["evaluations"] for h in hist]
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "search",
            "x": x,
            "y": [h["hypervolume"] for h in hist],
            "line": {"color": "#d62728", "width": 2.5, "shape": "hv"},
        }
    ]
    for name, base in (run.summary.get("baselines") or {}).items():
        if base and base.get("hypervolume") is not None and base.get("points"):
            label = GROUP_STYLE.get(name, (name, {"color": "#555"}))
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{label[0]} (final)",
                    "x": [min(x), max(x)],
                    "y": [base["hypervolume"]] * 2,
                    "line": {"dash": "dash", "color": label[1]["color"]},
                }
            )
    return {**fig, "data": data}


def _surrogate_figure(run: RunData, points: list[dict]) -> dict:
    pts = [p for p in points if p["group"] == "search" and p.get("predicted_accuracy") is not None]
    tau = run.summary.get("surrogate_kendall_tau")
    title = "Surrogate vs simulated accuracy" + (f" (Kendall τ = {tau:.3f})" if tau is not None else "")
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
    xs = [100 * p["predicted_accuracy"] for p in pts]
    ys = [100 * p["accuracy"] for p in pts]
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
                "text": [f"trial {p.get('trial')}" for p in pts],
                "hovertemplate": "%{text}<br>surrogate %{x:.2f} %<br>simulated %{y:.2f} %<extra></extra>",
            },
        ],
    }


def _tolerance_figure(run: RunData) -> dict:
    names = [layer["name"] for layer in run.layers]
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
                "y": [a.sigma_rel.get(n) for n in names],
                "hovertemplate": "%{x}: σ_l = %{y:.3f}<extra>λ " + f"{a.lam:g}" + "</extra>",
            }
        )
    return {**fig, "data": data}


def _library_figure(run: RunData, library, points: list[dict]) -> dict:
    fig = {
        "id": "library",
        "layout": {
            "title": {"text": "Multiplier library: error vs energy (exact = 1, not shown)"},
            "height": 360,
            "margin": {"t": 50, "r": 20, "b": 50, "l": 70},
            "xaxis": {"title": {"text": "energy relative to exact"}},
            "yaxis": {"title": {"text": "mean relative error, MRE (%)"}, "type": "log"},
            "legend": {"orientation": "h", "y": -0.25},
        },
    }
    if library is None:
        return {**fig, "empty": "Multiplier library: could not be loaded."}
    used = {m for p in points for m in (p.get("assignment") or {}).values()}
    front_used = {m for p in points if p.get("on_front") for m in (p.get("assignment") or {}).values()}
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
    groups = {"on the front": [], "used by other points": [], "not used": []}
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
                    f"<b>{html.escape(m.name)}</b><br>energy_rel {m.energy_rel:.3f}<br>MAE {m.metrics['mae_percent']:.4f} %"
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


def _facts(run: RunData, points: list[dict]) -> list[tuple[str, str]]:
    s, q = run.summary, run.quant_accuracy
    front = [p for p in points if p.get("on_front")]
    facts = [("quantized accuracy", f"{_pct(q)} val · {_pct(s.get('quant_test_accuracy'))} test")]
    facts.append(
        (
            "simulations",
            f"{s.get('evaluations', len([p for p in points if p['group'] == 'search']))}"
            + (f" in {s['seconds']:.0f} s" if s.get("seconds") is not None else "")
            + (f" ({s['simulations_per_second']:.2f}/s)" if s.get("simulations_per_second") else ""),
        )
    )
    if q is not None:
        ok = [p for p in front if p["accuracy"] >= q - 0.01 - 1e-12]
        if ok:
            best = min(ok, key=lambda p: p["energy_rel"])
            test = "" if best.get("test_accuracy") is None else f", {_pct(best['test_accuracy'])} test"
            facts.append(
                (
                    "best saving within 1 pp",
                    f"{round(100 * (1 - best['energy_rel']), 1) + 0.0:.1f} % "
                    f"(trial {best.get('trial')}: {_pct(best['accuracy'])} val{test})",
                )
            )
            homog = [p for p in points if p["group"] == "homogeneous" and p["accuracy"] >= q - 0.01 - 1e-12]
            best_h = max((1 - p["energy_rel"] for p in homog), default=None)
            if best_h is not None and best_h > 1e-9:
                facts.append(
                    (
                        "vs best homogeneous within 1 pp",
                        f"{(1 - best['energy_rel']) / best_h:.2f}× the saving",
                    )
                )
        qt = s.get("quant_test_accuracy")
        gaps = [
            100 * ((qt - p["test_accuracy"]) - (q - p["accuracy"]))
            for p in front
            if qt is not None and p.get("test_accuracy") is not None
        ]
        if gaps:
            gaps.sort()
            mid = len(gaps) // 2
            median = gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
            facts.append(("front: test − validation loss", f"{median:+.2f} pp median"))
    hv = s.get("hypervolume")
    if hv is not None:
        bases = ", ".join(
            f"{GROUP_STYLE.get(n, (n,))[0]} {b['hypervolume']:.4f}"
            for n, b in (s.get("baselines") or {}).items()
            if b and b.get("hypervolume") is not None and b.get("points")
        )
        facts.append(("hypervolume", f"{hv:.4f}" + (f" (baselines: {bases})" if bases else "")))
    if s.get("surrogate_kendall_tau") is not None:
        facts.append(("surrogate Kendall τ", f"{s['surrogate_kendall_tau']:.3f}"))
    facts.append(("front points", str(len(front))))
    return facts


def report_points(run: RunData) -> list[dict[str, Any]]:
    """The page's points (search, then baselines), each with its group and whether it is on the front."""
    front_keys = {json.dumps(p.get("assignment"), sort_keys=True) for p in run.summary.get("front") or []}
    points = []
    for p in run.all_points():
        if p.get("accuracy") is None or p.get("energy_rel") is None:
            continue  # not simulated yet (a running trial)
        on_front = p["group"] == "search" and json.dumps(p.get("assignment"), sort_keys=True) in front_keys
        points.append(
            {
                **p,
                "on_front": on_front,
                "group_label": "front" if on_front else GROUP_STYLE.get(p["group"], (p["group"],))[0],
            }
        )
    return points


def render_report(run: RunData, library) -> tuple[str, dict[str, int]]:
    """The page's HTML text and {"points", "front", "configs"} counts."""
    import plotly.offline

    points = report_points(run)
    if not points:
        raise UserError(
            f"{run.run_dir}: the search has not simulated a point yet; run the report again after its first trials"
        )
    configs: list[str | None] = []
    config_error = None
    for p in points:
        if library is None:
            configs.append(None)
            continue
        try:
            configs.append(config_text(build_config(run, p, library)))
        except UserError as e:
            configs.append(None)
            config_error = config_error or str(e)
    if library is None:
        config_error = "the multiplier library could not be loaded"
    missing = list(run.missing) + ([f"configurations: {config_error}"] if config_error else [])
    figures = [
        _pareto_figure(run, points),
        _hypervolume_figure(run),
        _surrogate_figure(run, points),
        _tolerance_figure(run),
        _library_figure(run, library, points),
    ]
    data = {
        "study": run.study_name,
        "quant_accuracy": run.quant_accuracy,
        "config_error": config_error,
        "figures": figures,
        "points": [
            {
                k: p.get(k)
                for k in (
                    "trial",
                    "group",
                    "group_label",
                    "origin",
                    "energy_rel",
                    "accuracy",
                    "test_accuracy",
                    "predicted_accuracy",
                    "assignment",
                    "on_front",
                )
            }
            for p in points
        ],
    }
    facts = "".join(
        f"<div class='fact'><div class='k'>{html.escape(k)}</div><div class='v'>{html.escape(v)}</div></div>"
        for k, v in _facts(run, points)
    )
    missing_html = (
        ""
        if not missing
        else (
            "<div class='missing'><b>Not in this run (yet):</b><ul>"
            + "".join(f"<li>{html.escape(m)}</li>" for m in missing)
            + "</ul></div>"
        )
    )
    files = resources.files("dse.report")
    template = files.joinpath("page.html").read_text()
    replacements = {
        "{{TITLE}}": html.escape(f"dse report: {run.study_name}"),
        "{{STUDY}}": html.escape(run.study_name),
        "{{SUBTITLE}}": html.escape(
            f"{run.study.get('model', {}).get('name', 'model ?')} on {run.study.get('data', {}).get('name', 'data ?')}"
            f" · run {run.run_dir} · summary of {run.summary_time} · dse {__version__}"
        ),
        "{{FACTS}}": facts,
        "{{MISSING}}": missing_html,
        "{{PLOTLYJS}}": plotly.offline.get_plotlyjs(),
        "{{DATA}}": _script_json(data),
        "{{CONFIGS}}": _script_json(pack_texts(configs)),
        "{{PAGEJS}}": files.joinpath("page.js").read_text(),
    }
    missing_keys = [k for k in replacements if k not in template]
    if missing_keys:
        raise RuntimeError(f"page.html lacks {missing_keys}")
    stats = {
        "points": len(points),
        "front": sum(1 for p in points if p.get("on_front")),
        "configs": sum(c is not None for c in configs),
    }
    # one pass: substituted values (plotly.js, data) are never searched for placeholders again
    return re.sub(r"\{\{[A-Z]+\}\}", lambda m: replacements.get(m.group(0), m.group(0)), template), stats


# cut points of a configuration's text: before each layer object, around each layer's `quant` value (the
# big per-channel part, the same for every point) — pieces shared between points are stored once
_PIECE_SPLIT = re.compile(r'(?=\n    \{\n)|(?<="quant": )|(?=\n    \})')


def pack_texts(texts: list[str | None]) -> dict[str, list]:
    """{"pieces": [str], "texts": [[piece index] | None]}: each text is the concatenation of its pieces
    (checked here), so the page rebuilds every configuration byte for byte at a fraction of the size."""
    pieces: list[str] = []
    index: dict[str, int] = {}
    packed: list[list[int] | None] = []
    for text in texts:
        if text is None:
            packed.append(None)
            continue
        parts = _PIECE_SPLIT.split(text)
        assert "".join(parts) == text
        packed.append([index.setdefault(part, len(index)) for part in parts])
        if len(index) > len(pieces):
            pieces.extend(list(index)[len(pieces) :])
    return {"pieces": pieces, "texts": packed}


def _script_json(obj: Any) -> str:
    """JSON safe inside <script type=application/json> (no '</' sequences)."""
    return json.dumps(to_jsonable(obj), allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def load_library_safely():
    try:
        from dse.multipliers.library import load_library

        return load_library()
    except (ImportError, UserError):
        return None


def write_report(run_dir: Path, out: Path | None = None, library=None) -> tuple[Path, dict[str, int]]:
    """Write `RUN_DIR/report.html` (or `out`); return its path and {"points", "front", "configs"} counts."""
    run = load_run(run_dir)
    lib = library if library is not None else load_library_safely()
    text, stats = render_report(run, lib)
    path = Path(out) if out is not None else run.run_dir / "report.html"
    atomic_write_text(path, text)
    return path, stats
