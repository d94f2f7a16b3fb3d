"""Placeholder: replaced by the issue that builds these commands."""

import click

from dse.util import UserError


@click.command('search', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def search(args):
    """(not built yet)"""
    raise UserError('dse search is not built yet')


@click.command('worker', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def worker(args):
    """(not built yet)"""
    raise UserError('dse worker is not built yet')
