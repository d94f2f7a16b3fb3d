"""Placeholder: replaced by the issue that builds these commands."""

import click

from dse.util import UserError


@click.command('multipliers', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def multipliers(args):
    """(not built yet)"""
    raise UserError('dse multipliers is not built yet')
