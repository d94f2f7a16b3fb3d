"""Nothing runs code that a file hands dse: a run directory's checkpoints load with `weights_only=True`, so a
crafted `prepare/qat.pt` (a pickle whose unpickling would run a shell command) is refused with a one-line
error by every command that reads it, and the command never runs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dse.cli import cli
from dse.rundir import RunDir
from dse.util import UserError, load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from report_fixture import make_run_dir  # noqa: E402


class _Payload:
    """Unpickling this object runs `touch marker` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def craft(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "inputs_sha256": "x", "extra": _Payload(marker)}, path)


def test_the_payload_does_run_code_when_unpickled_without_weights_only(tmp_path):
    """The crafted file is a real attack: loaded the old way (weights_only=False) it runs its command."""
    marker = tmp_path / "ran"
    craft(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_a_crafted_file_and_loads_a_plain_one(tmp_path):
    marker = tmp_path / "ran"
    craft(tmp_path / "evil.pt", marker)
    with pytest.raises(UserError, match=r"evil\.pt: stage checkpoint refused: it holds objects other than"):
        load_checkpoint(tmp_path / "evil.pt", "stage checkpoint")
    assert not marker.exists()
    torch.save(
        {"state_dict": {"w": torch.ones(2)}, "history": [{"loss": 1.0}], "key": "k"}, tmp_path / "ok.pt"
    )
    assert load_checkpoint(tmp_path / "ok.pt")["state_dict"]["w"].tolist() == [1.0, 1.0]
    # the stage cache refuses it too (it used to return None and recompute; a crafted file is not stale)
    with pytest.raises(UserError, match="refused"):
        RunDir(tmp_path).read_stage_checkpoint(tmp_path / "evil.pt", "x")
    assert not marker.exists()


def test_every_checkpoint_of_a_real_run_loads_with_weights_only(tiny_digits_run):
    """What dse writes is tensors and plain data only: the restriction refuses nothing real."""
    found = sorted(Path(tiny_digits_run).rglob("*.pt"))
    assert any(p.name == "qat.pt" for p in found)
    for p in found:
        assert isinstance(load_checkpoint(p), dict), p


def _assert_refused(result, marker: Path, ckpt: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()  # log lines of the stages before it may come first
    err = lines[-1]
    assert err.startswith("error: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert [line for line in lines if line.startswith("error:")] == [err]
    assert str(ckpt) in err and "refused" in err, err
    assert not marker.exists(), "the crafted checkpoint ran its command"


@pytest.mark.parametrize("command", ["report", "export"])
def test_report_and_export_refuse_a_crafted_qat_checkpoint(tmp_path, command):
    run = tmp_path / "run"
    make_run_dir(run)
    marker, ckpt = tmp_path / "ran", run / "prepare" / "qat.pt"
    craft(ckpt, marker)
    args = [command, str(run)] + (
        ["--trial", "0", "-o", str(tmp_path / "c.json")] if command == "export" else []
    )
    _assert_refused(CliRunner().invoke(cli, args, env={"DSE_NO_PROGRESS": "1"}), marker, ckpt)


@pytest.fixture
def crafted_run(tiny_digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_digits_run, run)
    layers = [layer["name"] for layer in json.loads((run / "prepare" / "result.json").read_text())["layers"]]
    config = tmp_path / "assignment.json"
    config.write_text(json.dumps({name: "exact_u8" for name in layers}))
    marker, ckpt = tmp_path / "ran", run / "prepare" / "qat.pt"
    craft(ckpt, marker)
    return run, config, marker, ckpt


@pytest.mark.parametrize("command", ["evaluate", "analyze", "search", "retrain"])
def test_commands_on_a_prepared_run_refuse_a_crafted_qat_checkpoint(crafted_run, command):
    run, config, marker, ckpt = crafted_run
    args = {
        "evaluate": ["evaluate", str(config), "--run", str(run)],
        "analyze": ["analyze", str(run)],
        # a budget of at least the 8 seeds: a smaller one is refused before the checkpoint is read
        "search": ["search", str(run / "study.toml"), "--out", str(run), "--no-report", "--budget", "8"],
        "retrain": ["retrain", str(run), "--config", str(config), "--epochs", "1"],
    }[command]
    _assert_refused(CliRunner().invoke(cli, args, env={"DSE_NO_PROGRESS": "1"}), marker, ckpt)
