"""Placeholder: replaced by the issue that builds these commands."""

import click

from dse.util import UserError


@click.command('agn', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def agn(args):
    """(not built yet)"""
    raise UserError('dse agn is not built yet')
