"""Placeholder: replaced by the issue that builds these commands."""

import click

from dse.util import UserError


@click.command('prepare', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def prepare(args):
    """(not built yet)"""
    raise UserError('dse prepare is not built yet')
