"""Where the benchmarks find real routing recorded from trained models (benchmark data, not shipped
with the project): ``$MOE_PLANNER_REAL_TRACES``, else ``../shared/data/traces`` next to the checkout.

The files and their sources (arXiv 2508.17137's DeepSeek-V2-Lite-Chat Puffin routing, Qwen3-30B-A3B
decode counts, the OLMoE paper's domain counts, DeepSeek-V3 published balance) are described in
that folder's README.
"""

from __future__ import annotations

import os
from pathlib import Path

REAL_TRACES = Path(
    os.environ.get("MOE_PLANNER_REAL_TRACES", Path(__file__).resolve().parents[1].parent / "shared/data/traces")
)
#: Per-token routing of DeepSeek-V2-Lite-Chat on 1,000 Puffin prompts (seq_id / pos per token).
DEEPSEEK_V2_LITE = "deepseek-v2-lite-chat-puffin-a.npz"


def real_trace_path(name: str = DEEPSEEK_V2_LITE) -> Path:
    """The path of a real routing file; a clear error when the folder is absent."""
    p = REAL_TRACES / name
    if not p.is_file():
        raise SystemExit(f"real trace {name} not found in {REAL_TRACES}: set MOE_PLANNER_REAL_TRACES")
    return p
