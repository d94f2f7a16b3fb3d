"""The click options several commands share (`--data`, `--device`, `--out`, `--json`, `--threads`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dse.util import UserError

F = TypeVar("F", bound=Callable[..., Any])


def data_option(f: F) -> F:
    return click.option(
        "--data",
        "data",
        type=click.Path(path_type=Path),
        default=None,
        help="Dataset location (file or directory); overrides the study's data.path.",
    )(f)


def device_option(f: F) -> F:
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="cpu | cuda | cuda:N | auto (cuda when available).",
    )(f)


def out_option(f: F) -> F:
    return click.option(
        "--out",
        "out",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Run directory (default runs/<study name>).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(f)


def threads_option(f: F) -> F:
    return click.option(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: one per core; 1 on a busy machine is faster).",
    )(f)


LIBRARY_HELP = (
    "User library directory (imported multipliers), where the search space names no `library`. "
    "Default: $DSE_LIBRARY, else ~/.local/share/dse/multipliers."
)


def _set_library(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """`--library DIR` is `DSE_LIBRARY=DIR` for this process (and the workers it starts), so every stage
    that loads the library sees the same directory without threading it through every call."""
    if value is not None:
        import os

        from dse.multipliers.library import LIBRARY_ENV

        if value.exists() and not value.is_dir():
            raise UserError(f"--library {value}: expected a directory")
        os.environ[LIBRARY_ENV] = str(value.expanduser().resolve())
    return value


def library_option(f: F) -> F:
    return click.option(
        "--library",
        "library",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        expose_value=False,
        callback=_set_library,
        help=LIBRARY_HELP,
    )(f)
