"""Placeholder: replaced by the issue that builds these commands."""

import click

from dse.util import UserError


@click.command('bench', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def bench(args):
    """(not built yet)"""
    raise UserError('dse bench is not built yet')
