"""The `dse` command line. Thin: each command parses, calls one library function, prints.

Commands live one group per module in this package and are imported only when used, so that
`dse --help` stays fast (torch is not imported for it).
"""

from __future__ import annotations

import importlib
import sys

import click

from dse import __version__
from dse.util import UserError

# command name -> (module, attribute). Each module keeps its heavy imports inside the functions.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("dse.cli.init", "init"),
    "search": ("dse.cli.search", "search"),
    "worker": ("dse.cli.search", "worker"),
    "prepare": ("dse.cli.prepare", "prepare"),
    "agn": ("dse.cli.agn", "agn"),
    "analyze": ("dse.cli.analyze", "analyze"),
    "retrain": ("dse.cli.retrain", "retrain"),
    "report": ("dse.cli.report", "report"),
    "export": ("dse.cli.report", "export"),
    "evaluate": ("dse.cli.report", "evaluate"),
    "multipliers": ("dse.cli.multipliers", "multipliers"),
    "bench": ("dse.cli.bench", "bench"),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dse")
def cli() -> None:
    """Find per-layer approximate-multiplier assignments that trade multiplication energy against
    accuracy: a Pareto front, scored by bit-exact behavioural simulation.

    \b
    Quick start:
      dse search                      # the default study (8x8 digits, CPU, minutes)
      dse init my_study.toml          # a commented study file for your model and data
      dse report runs/digits --open   # the interactive Pareto page
      dse export runs/digits --max-accuracy-loss 1.0 -o cfg.json
    """


def main() -> None:
    cli(prog_name="dse")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
