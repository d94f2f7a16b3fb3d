"""The report in a real headless Chromium (Debian `chromium` driven by Playwright, never a downloaded
browser): every point drawn, a click on a front point shows its per-layer panel, and the panel's
download is the configuration `dse export --trial N` writes, valid against the shipped schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from report_fixture import fake_library, make_run_dir

from dse.cli import cli
from dse.hwconfig import config_schema
from dse.report.html import CHROMIUM_ARGS

CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path is None:
        pytest.fail(
            "the browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; "
            ".ci/run installs it). It never downloads a browser.",
            pytrace=False,
        )
    return path


@pytest.mark.browser
@pytest.mark.slow
def test_report_in_chromium(tmp_path, monkeypatch):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright for Python (pip install playwright)", pytrace=False)
    executable = chromium_path()
    run_dir = tmp_path / "run"
    summary = make_run_dir(run_dir)
    monkeypatch.setattr("dse.report.html.load_library_safely", fake_library)
    monkeypatch.setattr("dse.report.export.load_library_for", lambda run: fake_library())
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page_url = (run_dir / "report.html").resolve().as_uri()
    n_points = len(summary["points"]) + sum(len(b["points"]) for b in summary["baselines"].values())
    n_front = len(summary["front"])

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
            # offline: any request leaving file:// fails the test
            context.route(
                "http*://**", lambda route: (errors.append(f"network: {route.request.url}"), route.abort())
            )
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(page_url)
            page.wait_for_selector("#pareto .scatterlayer .point")
            # every point once, the front points a second time (the highlighted front line)
            assert page.locator("#pareto .scatterlayer .point").count() == n_points + n_front
            for chart in ("#hypervolume", "#surrogate", "#tolerance", "#library"):
                assert page.locator(f"{chart} .main-svg").count() > 0, f"{chart} not drawn"
            assert page.locator("#panel.placeholder").count() == 1

            # click (with the mouse, as a user does) the front point with the largest energy saving within 1 pp
            q = summary["quant_accuracy"]
            front = sorted(summary["front"], key=lambda p: p["energy_rel"])
            target = min((p for p in front if p["accuracy"] >= q - 0.01), key=lambda p: p["energy_rel"])
            index = front.index(target)
            front_points = page.locator("#pareto .scatterlayer .trace").last.locator(".point")
            assert front_points.count() == n_front
            box = front_points.nth(index).bounding_box()
            # hover: the per-layer assignment summary
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("#pareto .hoverlayer .hovertext")
            hover = page.locator("#pareto .hoverlayer .hovertext").first.text_content()
            for layer in summary["layers"]:
                assert f"{layer['name']}: {target['assignment'][layer['name']]}" in hover, hover
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("#panel table.layers")
            assert page.locator("#panel").get_attribute("data-trial") == str(target["trial"])
            rows = page.locator("#panel table.layers tbody tr")
            assert rows.count() == len(summary["layers"])
            for i, layer in enumerate(summary["layers"]):
                text = rows.nth(i).inner_text()
                assert layer["name"] in text and target["assignment"][layer["name"]] in text

            with page.expect_download() as info:
                page.click("#download")
            download = info.value
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}")
        finally:
            browser.close()
    assert not errors, errors

    downloaded = json.loads(saved.read_text())
    jsonschema.validate(downloaded, config_schema())
    exported = tmp_path / "exported.json"
    result = runner.invoke(
        cli, ["export", str(run_dir), "--trial", str(target["trial"]), "-o", str(exported)]
    )
    assert result.exit_code == 0, result.output
    assert saved.read_bytes() == exported.read_bytes()
    assert downloaded["provenance"]["trial"] == target["trial"]
    assert shot.stat().st_size > 50_000
