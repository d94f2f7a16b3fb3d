"""Placeholder: replaced by the issue that builds these commands."""

import click

from dse.util import UserError


@click.command('analyze', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def analyze(args):
    """(not built yet)"""
    raise UserError('dse analyze is not built yet')
