"""The external EDA tools (Debian packages `iverilog`, `yosys`): find them, run them with a time limit."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dse.util import UserError

DEBIAN_PACKAGE = {"iverilog": "iverilog", "vvp": "iverilog", "yosys": "yosys"}


def require(tool: str) -> str:
    """The path of `tool`, or a one-line UserError naming the Debian package that provides it."""
    path = shutil.which(tool)
    if path is None:
        raise UserError(
            f"{tool}: not found on PATH; install the Debian package `{DEBIAN_PACKAGE.get(tool, tool)}` "
            f"(apt-get install {DEBIAN_PACKAGE.get(tool, tool)})"
        )
    return path


def run_tool(args: Sequence[str], cwd: Path, timeout: float = 300.0) -> str:
    """Run an EDA tool; its stdout, or a UserError with the tail of its output when it fails."""
    exe = require(args[0])
    try:
        done = subprocess.run(
            [exe, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise UserError(f"{args[0]}: did not finish in {timeout:.0f} s") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UserError(f"{args[0]} failed (exit {done.returncode}): {' | '.join(tail)}")
    return done.stdout
