"""The report and the export load the user library the run's search space names (`library = "DIR"`,
relative to the space file), so a run on imported multipliers exports without --library."""

from __future__ import annotations

from report_fixture import make_run_dir

from dse.multipliers import Multiplier, exact_table
from dse.multipliers.library import save_user_multiplier
from dse.report.export import load_library_for
from dse.report.results import read_results


def test_the_search_spaces_library_is_the_one_the_report_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("DSE_LIBRARY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "nowhere"))
    run_dir = tmp_path / "run"
    make_run_dir(run_dir)
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "mine.toml").write_text(
        'name = "mine"\nformat = "unsigned"\nweight_scheme = "sign-magnitude"\n'
        'multipliers = ["exact_u8", "mine_u8"]\nlibrary = "../mylib"\n'
    )
    lut = exact_table(False).copy()
    lut[9, 9] += 4
    save_user_multiplier(Multiplier("mine_u8", False, lut, 0.6, "test"), tmp_path / "mylib")
    study = (run_dir / "study.toml").read_text()
    head, _, rest = study.partition("[search_space]")
    rest = rest[rest.index("[model]") :]
    (run_dir / "study.toml").write_text(
        head.replace(
            'name = "synthetic_digits"\n',
            f'name = "synthetic_digits"\nsearch_space = "{tmp_path / "spaces" / "mine.toml"}"\n',
        )
        + rest
    )
    run = read_results(run_dir)
    assert run.library_dir == str((tmp_path / "mylib").resolve())
    assert "mine_u8" in load_library_for(run).names()
