"""`dse report`: one self-contained HTML page (plotly.js embedded, works offline from a file:// URL).

`dse.report.figures` builds the plotly figure dicts; `page.js` draws them and handles clicks. Every
point's configuration JSON is embedded as the exact text `dse export --trial N` writes (`config_text`), so
the page's download and the CLI's file are byte-identical.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from dse import __version__
from dse.hwconfig import config_text
from dse.multipliers.library import Library, load_library
from dse.report.config import build_config
from dse.report.figures import (
    hypervolume_figure,
    library_figure,
    pareto_figure,
    pct,
    surrogate_figure,
    tolerance_figure,
)
from dse.report.points import GROUP_STYLE, PagePoint, report_points
from dse.report.results import RunResults, read_results
from dse.rundir import RunDir
from dse.util import UserError, atomic_write_text, to_jsonable

# How docs/make_screenshot.py and the browser test open the page: headless Chromium, no network chatter.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _facts(run: RunResults, points: list[PagePoint]) -> list[tuple[str, str]]:
    s, q = run.summary, run.quant_accuracy
    front = [p for p in points if p.on_front]
    facts = [("quantized accuracy", f"{pct(q)} val · {pct(s.quant_test_accuracy)} test")]
    facts.append(
        (
            "simulations",
            f"{s.evaluations}"
            + (f" in {s.seconds:.0f} s" if s.seconds is not None else "")
            + (f" ({s.simulations_per_second:.2f}/s)" if s.simulations_per_second else ""),
        )
    )
    if q is not None:
        ok = [p for p in front if p.accuracy >= q - 0.01 - 1e-12]
        if ok:
            best = min(ok, key=lambda p: p.energy_rel)
            test = "" if best.test_accuracy is None else f", {pct(best.test_accuracy)} test"
            facts.append(
                (
                    "best saving within 1 pp",
                    f"{round(100 * (1 - best.energy_rel), 1) + 0.0:.1f} % "
                    f"(trial {best.trial}: {pct(best.accuracy)} val{test})",
                )
            )
            homog = [p for p in points if p.group == "homogeneous" and p.accuracy >= q - 0.01 - 1e-12]
            best_h = max((1 - p.energy_rel for p in homog), default=None)
            if best_h is not None and best_h > 1e-9:
                facts.append(
                    (
                        "vs best homogeneous within 1 pp",
                        f"{(1 - best.energy_rel) / best_h:.2f}× the saving",
                    )
                )
        qt = s.quant_test_accuracy
        gaps = [
            100 * ((qt - p.test_accuracy) - (q - p.accuracy))
            for p in front
            if qt is not None and p.test_accuracy is not None
        ]
        if gaps:
            gaps.sort()
            mid = len(gaps) // 2
            median = gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
            facts.append(("front: test − validation loss", f"{median:+.2f} pp median"))
    hv = s.hypervolume
    if hv is not None:
        bases = ", ".join(
            f"{GROUP_STYLE.get(n, (n,))[0]} {b.hypervolume:.4f}"
            for n, b in s.baselines.items()
            if b.hypervolume is not None and b.points
        )
        facts.append(("hypervolume", f"{hv:.4f}" + (f" (baselines: {bases})" if bases else "")))
    if s.hypervolume_by_origin:
        facts.append(
            ("hypervolume by origin", ", ".join(f"{k} {v:.4f}" for k, v in s.hypervolume_by_origin.items()))
        )
    if s.surrogate_kendall_tau is not None:
        facts.append(("surrogate Kendall τ (out of sample)", f"{s.surrogate_kendall_tau:.3f}"))
    facts.append(("front points", str(len(front))))
    if s.simulated_images is not None:
        per = s.simulated_images_per_front_point
        facts.append(
            (
                "simulated validation images",
                f"{s.simulated_images:,} over {s.evaluations} candidates ({s.rejected_early or 0} rejected early)"
                + (f", {per:,.0f} per front point" if per is not None else ""),
            )
        )
    if s.requeued_trials:  # RUNNING when their worker died (kill, lost machine): asked again
        facts.append(("trials re-run after a worker died", str(s.requeued_trials)))
    shifted = [layer.name for layer in run.layers if layer.shifted]
    if shifted:  # the hardware flow must apply these layers' activation zero point too
        facts.append(("input zero point shifted (negative inputs)", ", ".join(shifted)))
    return facts


def render_report(run: RunResults, library: Library | None) -> tuple[str, dict[str, int]]:
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
            configs.append(config_text(build_config(run, p.point, library)))
        except UserError as e:
            configs.append(None)
            config_error = config_error or str(e)
    if library is None:
        config_error = "the multiplier library could not be loaded"
    missing = list(run.missing) + ([f"configurations: {config_error}"] if config_error else [])
    figures = [
        pareto_figure(run, points),
        hypervolume_figure(run),
        surrogate_figure(run, points),
        tolerance_figure(run),
        library_figure(run, library, points),
    ]
    data = {
        "study": run.study_name,
        "quant_accuracy": run.quant_accuracy,
        "config_error": config_error,
        "figures": figures,
        "points": [p.to_json() for p in points],
        "shifted_layers": [layer.name for layer in run.layers if layer.shifted],
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
    fallbacks = run.summary.fallbacks  # stages that failed while the search went on (summary.json)
    if fallbacks:
        missing_html += (
            "<div class='missing fallbacks'><b>The search ran without:</b><ul>"
            + "".join(
                f"<li>{html.escape(f.stage)} ({html.escape(f.error)}): {html.escape(f.effect)}</li>"
                for f in fallbacks
            )
            + "</ul></div>"
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
        "front": sum(1 for p in points if p.on_front),
        "configs": sum(c is not None for c in configs),
    }
    # one pass: substituted values (plotly.js, data) are never searched for placeholders again
    return re.sub(r"\{\{[A-Z]+\}\}", lambda m: replacements.get(m.group(0), m.group(0)), template), stats


# cut points of a configuration's text: before each layer object, around each layer's `quant` value (the
# big per-channel part, the same for every point) — pieces shared between points are stored once
_PIECE_SPLIT = re.compile(r'(?=\n    \{\n)|(?<="quant": )|(?=\n    \})')


def pack_texts(texts: list[str | None]) -> dict[str, list[Any]]:
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


def load_library_safely(library_dir: str | None = None) -> Library | None:
    """The multiplier library, or None when it cannot be loaded (the page then says so)."""
    try:
        return load_library(library_dir)
    except UserError:
        return None


def write_report(
    run_dir: Path, out: Path | None = None, library: Library | None = None
) -> tuple[Path, dict[str, int]]:
    """Write `RUN_DIR/report.html` (or `out`); return its path and {"points", "front", "configs"} counts."""
    run = read_results(run_dir)
    lib = library if library is not None else load_library_safely(run.library_dir)
    text, stats = render_report(run, lib)
    path = Path(out) if out is not None else RunDir(run.run_dir).report_html
    atomic_write_text(path, text)
    return path, stats
