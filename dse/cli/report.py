"""Placeholder: replaced by the issue that builds these commands."""

import click

from dse.util import UserError


@click.command('report', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def report(args):
    """(not built yet)"""
    raise UserError('dse report is not built yet')


@click.command('export', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def export(args):
    """(not built yet)"""
    raise UserError('dse export is not built yet')


@click.command('evaluate', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1)
def evaluate(args):
    """(not built yet)"""
    raise UserError('dse evaluate is not built yet')
