"""The report's labels in a real headless Chromium (Debian `chromium` via Playwright): a clicked search
point's badge names what its tooltip names, a point without test accuracy shows no "– test", the
"not in view" note and the hover box stay off the markers and the title, the library chart labels only
powers of ten, a design costing more than exact does not stretch the axis, the homogeneous baseline under
a per-layer restriction is called what it is, and shifted-zero-point layers are named."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from report_fixture import fake_library, make_run_dir
from test_browser_report import chromium_path

from dse.cli import cli
from dse.report.html import CHROMIUM_ARGS


def _overlap(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


@pytest.mark.browser
@pytest.mark.slow
def test_report_labels_in_chromium(tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    run_dir = tmp_path / "run"
    summary = make_run_dir(run_dir)
    # a homogeneous design that costs more than exact, far below the focus (the x axis must stay >= 0);
    # the first layer gets negative inputs (shifted zero point); a per-layer restriction on it
    costly = dict(summary["baselines"]["homogeneous"]["points"][-1])
    costly.update(energy_rel=1.2, accuracy=0.5, test_accuracy=None, trial=None)
    summary["baselines"]["homogeneous"]["points"].append(costly)
    summary["layers"][0]["act_rule"] = "shifted"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    study = (run_dir / "study.toml").read_text()
    (run_dir / "study.toml").write_text(
        study.replace(
            'multipliers = ["exact_u8", "trunc_*"]\n',
            'multipliers = ["exact_u8", "trunc_*"]\n[search_space.layers."features.0"]\n'
            'multipliers = ["exact_u8", "trunc_1"]\n',
        )
    )
    monkeypatch.setattr("dse.report.html.load_library_safely", fake_library)
    monkeypatch.setattr("dse.report.export.load_library_for", lambda run: fake_library())
    result = CliRunner().invoke(cli, ["report", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto((run_dir / "report.html").resolve().as_uri())
            page.wait_for_selector("#pareto .scatterlayer .point")
            points = page.evaluate("JSON.parse(document.getElementById('dse-data').textContent).points")

            # a search point seeded homogeneous: badge and tooltip say the same ("homogeneous seed")
            i = next(
                k for k, p in enumerate(points) if p["group"] == "search" and p["origin"] == "homogeneous"
            )
            page.evaluate(f"window.dseShowPoint({i})")
            badge = page.locator("#panel h3 .tag").inner_text()
            assert "homogeneous seed" in badge and "all simulated" not in badge, badge
            search_trace = page.locator("#pareto .scatterlayer .trace").first.locator(".point")
            on_trace = [k for k, p in enumerate(points) if p["group"] == "search"].index(i)
            box = search_trace.nth(on_trace).bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("#pareto .hoverlayer .hovertext")
            assert badge in page.locator("#pareto .hoverlayer .hovertext").first.text_content()

            # a random-baseline point has no test accuracy: no "– test" in the panel
            j = next(k for k, p in enumerate(points) if p["test_accuracy"] is None and p["group"] == "random")
            page.evaluate(f"window.dseShowPoint({j})")
            facts = page.locator("#panel p.facts").inner_text()
            assert "test" not in facts.split("origin")[0], facts

            # the homogeneous baseline under a restriction is "uniform where allowed", legend included
            legend = page.locator("#pareto .legendtext").all_text_contents()
            assert any(t.startswith("uniform where allowed") for t in legend), legend
            assert not any(t.startswith("homogeneous") for t in legend), legend

            # the x axis is not stretched by the design costing more than exact, and the note says so
            x_lo = page.evaluate("document.getElementById('pareto').layout.xaxis.range[0]")
            assert -5 < x_lo <= 0, x_lo
            note = page.locator("#pareto .annotation", has_text="not in view")
            assert "costing more than exact" in note.text_content()
            note_box = note.bounding_box()
            for k in range(page.locator("#pareto .scatterlayer .point").count()):
                marker = page.locator("#pareto .scatterlayer .point").nth(k).bounding_box()
                if marker is not None:
                    assert not _overlap(note_box, marker), (note_box, marker)

            # the hover box of the topmost front point stays off the chart title
            front = page.locator("#pareto .scatterlayer .trace").last.locator(".point")
            top = min((front.nth(k).bounding_box() for k in range(front.count())), key=lambda b: b["y"])
            page.mouse.move(top["x"] + top["width"] / 2, top["y"] + top["height"] / 2)
            page.wait_for_selector("#pareto .hoverlayer .hovertext")
            hover_box = page.locator("#pareto .hoverlayer .hovertext").first.bounding_box()
            title_box = page.locator("#pareto-title").bounding_box()
            assert not _overlap(hover_box, title_box), (hover_box, title_box)

            # the library chart's log axis labels powers of ten only (no "2", "5" minor labels)
            ticks = [t.strip() for t in page.locator("#library .ytick text").all_text_contents()]
            assert ticks and all(t.replace("−", "-").startswith(("1", "0.", "10")) for t in ticks), ticks
            assert not any(t in ("2", "5", "20", "50") for t in ticks), ticks

            # the layer with negative inputs is named in the header facts and the layer table
            assert "features.0" in page.locator(".fact", has_text="zero point shifted").inner_text()
            page.evaluate(f"window.dseShowPoint({i})")
            assert "shifted zero point" in page.locator("#panel table.layers tbody tr").first.inner_text()
        finally:
            browser.close()
    assert not errors, errors
