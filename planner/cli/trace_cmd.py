"""``moe-planner trace synth|convert|stats`` (placeholder until the traces work lands)."""

import click


@click.group()
def trace() -> None:
    """Make, convert and summarise routing traces."""
