"""`dse report --open` on a machine without a web browser says so (and still writes the page)."""

from __future__ import annotations

from click.testing import CliRunner
from report_fixture import fake_library, make_run_dir

from dse.cli import cli


def test_open_without_a_browser_says_so(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    make_run_dir(run_dir)
    monkeypatch.setattr("dse.report.html.load_library_safely", fake_library)
    opened: list[str] = []
    # webbrowser.open returns False when it finds no browser to run (a server, a container)
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or False)
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--open"])
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").resolve()
    assert opened == [page.as_uri()]
    assert f"no web browser found on this machine; open {page.as_uri()}" in result.stderr
    assert str(run_dir / "report.html") in result.stdout


def test_open_with_a_browser_is_quiet(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    make_run_dir(run_dir)
    monkeypatch.setattr("dse.report.html.load_library_safely", fake_library)
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: True)
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--open"])
    assert result.exit_code == 0 and "no web browser" not in result.stderr
