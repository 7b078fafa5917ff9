"""``moe-planner schema NAME``: print the JSON schema of a file format."""

from __future__ import annotations

import json

import click

from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan
from planner.specs.workload import Workload


def _schemas() -> dict:
    return {
        "plan": Plan,
        "model": ModelSpec,
        "hardware": HardwareProfile,
        "cluster": ClusterSpec,
        "workload": Workload,
    }


@click.command()
@click.argument("name", type=click.Choice(["plan", "model", "hardware", "cluster", "workload"]))
def schema(name: str) -> None:
    """Print the JSON schema of a file format (plan, model, hardware, cluster, workload)."""
    click.echo(json.dumps(_schemas()[name].model_json_schema(), indent=2))
