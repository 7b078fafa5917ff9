"""Plans shared by the export tests (made once per session: each takes a fraction of a second)."""

import pytest

import planner


@pytest.fixture(scope="session")
def plan_replicas():
    """DeepSeek-V2-Lite (1 dense + 26 MoE layers, 64 experts), one node, 8 redundant: 8 × 9 slots."""
    return planner.plan("deepseek-v2-lite", baseline="eplb", redundant_experts=8, ep=8)


@pytest.fixture(scope="session")
def plan_replicas_2n():
    """The same model on 2 nodes × 8 GPUs with 16 redundant experts: 16 × 5 slots."""
    return planner.plan("deepseek-v2-lite", baseline="eplb", redundant_experts=16, nodes=2, ep=16)


@pytest.fixture(scope="session")
def plan_perm():
    """No replicas, EPLB packing: a non-trivial permutation per layer, 8 × 8 slots."""
    return planner.plan("deepseek-v2-lite", baseline="eplb", ep=8)


@pytest.fixture(scope="session")
def plan_perm_2n():
    """No replicas on 2 nodes: 16 × 4 slots."""
    return planner.plan("deepseek-v2-lite", baseline="eplb", nodes=2, ep=16)


@pytest.fixture(scope="session")
def plan_qwen():
    """Qwen3-30B-A3B: 48 layers, all MoE, 128 experts, 8 × 16 slots."""
    return planner.plan("qwen3-30b-a3b", baseline="round-robin")
