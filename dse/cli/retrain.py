"""Placeholder: replaced by the issue that builds these commands."""

import click

from dse.util import UserError


@click.command('retrain', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def retrain(args):
    """(not built yet)"""
    raise UserError('dse retrain is not built yet')
