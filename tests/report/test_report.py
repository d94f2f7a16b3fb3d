"""`dse report`: one self-contained page holding every point, its per-point configuration (the exact text
`dse export --trial N` writes), the charts, and a clear note of what a run does not have (yet)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from report_fixture import fake_library, make_run_dir

from dse.cli import cli
from dse.report.export import export_config
from dse.report.html import write_report


def embedded(html: str, element_id: str):
    m = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', html, re.S)
    assert m, f"no #{element_id} in the page"
    return json.loads(m.group(1))


def embedded_configs(html: str) -> list[str | None]:
    """The configuration texts the page's download button serves (rebuilt from the shared pieces)."""
    packed = embedded(html, "dse-configs")
    return [None if ids is None else "".join(packed["pieces"][k] for k in ids) for ids in packed["texts"]]


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    make_run_dir(tmp_path / "run")
    monkeypatch.setattr("dse.report.html.load_library_safely", fake_library)
    monkeypatch.setattr("dse.report.export.load_library_for", lambda run: fake_library())
    return tmp_path / "run"


def test_report_cli_writes_self_contained_page(run_dir):
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    summary = json.loads((run_dir / "summary.json").read_text())
    n_base = sum(len(b["points"]) for b in summary["baselines"].values())
    assert info["points"] == len(summary["points"]) + n_base
    assert info["front"] == len(summary["front"]) and info["configs"] == info["points"]
    html = (run_dir / "report.html").read_text()
    # offline: plotly.js is inline, nothing is fetched from a network
    assert "Plotly" in html and len(html) > 1_000_000
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', html)
    assert "synthetic_digits" in html and "energy saving" in html
    data = embedded(html, "dse-data")
    pareto = next(f for f in data["figures"] if f["id"] == "pareto")
    drawn = sum(len(t["x"]) for t in pareto["data"] if "markers" in t["mode"])
    assert drawn == info["points"] + info["front"]
    # the quantized-accuracy line and the 1 pp band below it
    ys = sorted({s["y0"] for s in pareto["layout"]["shapes"]} | {s["y1"] for s in pareto["layout"]["shapes"]})
    assert ys == pytest.approx([100 * summary["quant_accuracy"] - 1, 100 * summary["quant_accuracy"]])
    for fig in data["figures"]:
        assert "empty" not in fig, fig["id"]


def test_embedded_config_is_byte_identical_to_export(run_dir, tmp_path):
    path, _ = write_report(run_dir, library=fake_library())
    html = path.read_text()
    data, configs = embedded(html, "dse-data"), embedded_configs(html)
    checked = 0
    for point, text in zip(data["points"], configs):
        if point["trial"] is None or not point["on_front"]:
            continue
        out, _ = export_config(
            run_dir, tmp_path / f"t{point['trial']}.json", trial=point["trial"], library=fake_library()
        )
        assert out.read_text() == text
        checked += 1
    assert checked >= 3


def test_report_of_run_in_progress_says_what_is_missing(tmp_path):
    run_dir = tmp_path / "run"
    summary = make_run_dir(run_dir, with_predictions=False, with_agn=False)
    partial = {k: summary[k] for k in ("schema_version", "study", "quant_accuracy", "layers")}
    partial["points"] = summary["points"][:10]
    partial["points"].append({**summary["points"][10], "accuracy": None})  # still running
    partial["front"] = [p for p in summary["front"] if p["trial"] < 10]
    (run_dir / "summary.json").write_text(json.dumps(partial))
    path, stats = write_report(run_dir, library=fake_library())
    assert stats["points"] == 10
    html = path.read_text()
    assert "profiles/predictions.json" in html and "agn/result.json" in html
    assert "baselines" in html and "hypervolume history" in html
    data = embedded(html, "dse-data")
    empty = {f["id"] for f in data["figures"] if "empty" in f}
    assert {"hypervolume", "tolerance"} <= empty and "pareto" not in empty
    # configs are still complete, without predicted σ / tolerance
    cfg = json.loads(embedded_configs(html)[0])
    assert cfg["layers"][0]["predicted_sigma"] is None and cfg["layers"][0]["tolerance"] is None


def test_report_without_library_still_renders(tmp_path):
    run_dir = tmp_path / "run"
    make_run_dir(run_dir)
    from dse.report.html import render_report
    from dse.report.results import read_results

    html, stats = render_report(read_results(run_dir), None)
    assert stats["configs"] == 0 and stats["points"] > 0
    assert "multiplier library could not be loaded" in html


def test_report_bad_run_dirs(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "nope"):
        result = CliRunner().invoke(cli, ["report", str(target)])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "dse search" in lines[0], result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text('{"points": []}')
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "layers" in result.output


def test_report_while_search_runs_reads_optuna_storage(tmp_path):
    """No summary.json yet: the page shows the trials completed so far in search/optuna.db."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from report_fixture import LAYERS, MULTS

    run_dir = tmp_path / "run"
    summary = make_run_dir(run_dir)
    (run_dir / "summary.json").unlink()
    (run_dir / "prepare" / "result.json").write_text(
        json.dumps(
            {"quant_accuracy": summary["quant_accuracy"], "quant_test_accuracy": 0.968, "layers": LAYERS}
        )
    )
    (run_dir / "search").mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{run_dir / 'search' / 'optuna.db'}"
    study = optuna.create_study(
        study_name="synthetic_digits", storage=storage, directions=["minimize", "maximize"]
    )
    dists = {layer["name"]: CategoricalDistribution(MULTS) for layer in LAYERS}
    done = summary["points"][:25]
    for p in done:
        study.add_trial(
            optuna.trial.create_trial(
                params=p["assignment"],
                distributions=dists,
                values=[p["energy_rel"], p["accuracy"]],
                user_attrs={"origin": p["origin"]},
            )
        )
    study.ask(dists)  # one trial still running: not shown
    path, stats = write_report(run_dir, library=fake_library())
    assert stats["points"] == 25
    html = path.read_text()
    assert "still running" in html
    data = embedded(html, "dse-data")
    assert sorted(p["trial"] for p in data["points"]) == list(range(25))
    front_acc = {p["accuracy"] for p in data["points"] if p["on_front"]}
    best = max(p["accuracy"] for p in done)
    assert best in front_acc


def test_open_flag_opens_the_page_in_a_browser(run_dir, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--open"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert opened == [(run_dir / "report.html").resolve().as_uri()]
