"""ClusterSpec: which GPUs, how many, and how they are grouped into nodes."""

from __future__ import annotations

from pydantic import Field

from planner.specs.base import Spec


class ClusterSpec(Spec):
    """Nodes of identical GPUs; GPUs inside a node share NVLink, nodes talk over NICs."""

    hardware: str = Field(min_length=1, description="Hardware profile name (a file in hwprofiles/ or a path)")
    num_nodes: int = Field(default=1, gt=0, description="Number of nodes")
    gpus_per_node: int = Field(default=8, gt=0, description="GPUs per node (one NVLink domain)")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node
