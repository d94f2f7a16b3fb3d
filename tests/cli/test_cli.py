"""The command line as a user meets it: every command explains itself, versions, errors."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from dse import __version__
from dse.cli import COMMANDS, cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "not built yet" not in text
    assert "dse " in text and "xample" in text, f"`dse {name} --help` shows no example:\n{text}"


def test_top_level_help_is_fast_and_lists_commands():
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from dse.cli import main; sys.argv=['dse','--help']; main()"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
