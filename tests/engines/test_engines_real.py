"""The engines' own code on our outputs: SGLang 0.5.23 and vLLM 0.33.0, when they are installed.

Skipped without the packages (the README's test command does not install them); ``.ci/run``
installs the pinned wheels with ``--no-deps`` plus the light modules they import (CPU torch
stays) and runs this module after the README's command. What runs:

- **SGLang**: ``prepare_server_args`` on the ``launch_server`` line ``moe-planner export``
  prints, then ``publish`` — ``ServerArgs.resolve_once``, the resolution pipeline
  ``launch_server`` runs (``handle_eplb_and_dispatch`` among its handlers) — on a local
  ``config.json`` of the plan's model; then ``compute_initial_expert_location_metadata`` with
  SGLang's ``ModelConfig``, which reads the exported ``--init-expert-location`` file: its
  ``physical_to_logical_map`` must be the plan's, and its static dispatch table must agree with
  :func:`planner.simulator.static_table`.
- **vLLM**: ``DefaultEplbPolicy.rebalance_experts`` and ``compute_logical_maps`` against
  :func:`planner.solve.baselines.eplb` / ``logical_maps``; ``EplbState.update_mapping`` on the
  exported ``physical_to_logical_map``; the ``vllm serve`` parser (``make_arg_parser``,
  ``AsyncEngineArgs.from_cli_args``) on the printed lines (vLLM and vllm-ascend).

With ``MOE_PLANNER_ENGINES=require`` (``.ci/run`` sets it) a missing or broken engine package
fails the tests instead of skipping them. SGLang's ``sglang.srt.configs`` package imports ``torchvision`` for its vision models; PyPI's
torchvision wheel needs CUDA torch, so without a working torchvision a stand-in module is put in
``sys.modules`` while SGLang's modules load and run (no MoE code path uses it), after
transformers has cached that torchvision is absent.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import shlex
import sys
import types

import numpy as np
import pytest

import planner
from planner.exports import export
from planner.exports._common import phy2log_of, redundant_of
from planner.simulator import static_table
from planner.solve.baselines import eplb, logical_maps

# vLLM's platform for its argument parser; set before anything (SGLang too) imports vllm, which
# fixes the platform at first use.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

SGLANG_VERSION = "0.5.23"
VLLM_VERSION = "0.33.0"
_TV = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _engine(name: str, version: str) -> None:
    """Skip without ``name`` (fail instead under ``MOE_PLANNER_ENGINES=require``); a present
    package must import and be the pinned ``version``."""
    if importlib.util.find_spec(name) is None:
        if os.environ.get("MOE_PLANNER_ENGINES") == "require":
            pytest.fail(f"{name} {version} is not installed (MOE_PLANNER_ENGINES=require)")
        pytest.skip(f"{name} is not installed")
    importlib.import_module(name)  # a broken install is an error, not a skip
    assert importlib.metadata.version(name) == version, f"{name} {importlib.metadata.version(name)}, tests pin {version}"


# ---- plans --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan_1n():
    """DeepSeek-V2-Lite on one node, 8 × 9 slots (R = 8), static dispatch."""
    return planner.plan("deepseek-v2-lite", baseline="eplb", redundant_experts=8, ep=8, dispatch="static")


@pytest.fixture(scope="module")
def plan_2n():
    """The same on 2 nodes × 8 GPUs, 16 × 5 slots (R = 16), static dispatch."""
    return planner.plan("deepseek-v2-lite", baseline="eplb", redundant_experts=16, nodes=2, ep=16, dispatch="static")


def _hf_config(model) -> dict:
    """A DeepSeek-V2 ``config.json`` with the spec's shape (what SGLang reads from the model path)."""
    a = model.attention
    return {
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
        "hidden_size": model.hidden_size, "num_hidden_layers": model.num_layers,
        "first_k_dense_replace": model.first_k_dense, "moe_layer_freq": model.moe_layer_freq,
        "n_routed_experts": model.num_experts, "num_experts_per_tok": model.top_k,
        "moe_intermediate_size": model.expert_intermediate_size, "n_shared_experts": model.num_shared_experts,
        "intermediate_size": model.dense_intermediate_size, "vocab_size": model.vocab_size,
        "num_attention_heads": a.num_heads, "num_key_value_heads": a.num_heads,
        "kv_lora_rank": 512, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "n_group": model.n_group or 1, "topk_group": model.topk_group or 1,
        "topk_method": "greedy", "scoring_func": "softmax", "max_position_embeddings": 4096,
        "torch_dtype": "bfloat16", "rms_norm_eps": 1e-6, "rope_theta": 10000,
    }


# ---- SGLang -------------------------------------------------------------------------------------


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a CUDA-only wheel fails in many ways
        return False
    return True


def _stand_in(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    m.__dict__.update(attrs)
    return m


@pytest.fixture(scope="module")
def sgl():
    _engine("sglang", SGLANG_VERSION)
    saved = {k: sys.modules.get(k) for k in _TV}
    if not _torchvision_works():
        for k in _TV:
            sys.modules.pop(k, None)
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()  # cached False before the stand-in appears

        class InterpolationMode:
            NEAREST, BILINEAR, BICUBIC = 0, 2, 3

        fn = _stand_in(_TV[2], InterpolationMode=InterpolationMode)
        tr = _stand_in(_TV[1], InterpolationMode=InterpolationMode, functional=fn)
        sys.modules.update({_TV[0]: _stand_in(_TV[0], transforms=tr), _TV[1]: tr, _TV[2]: fn})
    try:
        from sglang.srt import runtime_context
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.eplb import expert_location
        from sglang.srt.server_args import prepare_server_args

        yield types.SimpleNamespace(
            prepare=prepare_server_args, publish=runtime_context.publish, ModelConfig=ModelConfig,
            load=expert_location.compute_initial_expert_location_metadata,
        )
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _model_dir(plan, tmp_path):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(_hf_config(plan.model)))
    return d


def _resolved(sgl, plan, flags, tmp_path):
    """SGLang's ServerArgs for ``launch_server --model-path DIR --device cpu FLAGS``, resolved and
    published as ``launch_server`` does."""
    args = sgl.prepare(["--model-path", str(_model_dir(plan, tmp_path)), "--device", "cpu", *flags])
    sgl.publish(args, role="scheduler")
    return args


@pytest.mark.parametrize("dispatch", ["static", "nearest", "local-first", "even"])
def test_sglang_resolves_the_printed_launch_line(sgl, plan_2n, tmp_path, dispatch):
    plan = plan_2n.model_copy(update={"dispatch": dispatch})
    r = export(plan, "sglang", tmp_path / "loc.json")
    args = _resolved(sgl, plan, r.flags, tmp_path)
    d = args.resolved_dict()
    want_algo = r.flags[r.flags.index("--ep-dispatch-algorithm") + 1]
    assert d["ep_dispatch_algorithm"] == want_algo
    assert d["moe_a2a_backend"] == ("none" if dispatch == "even" else "deepep")
    assert (d["ep_size"], d["ep_num_redundant_experts"]) == (16, redundant_of(plan))
    assert (d["nnodes"], d["node_rank"], d["dist_init_addr"]) == (2, 0, "HEAD_NODE_IP:5000")
    assert d["init_expert_location"] == str(tmp_path / "loc.json")


def test_sglang_refuses_static_dispatch_without_deepep_as_printed_before(sgl, plan_2n, tmp_path):
    flags = export(plan_2n, "sglang", tmp_path / "loc.json").flags
    i = flags.index("--moe-a2a-backend")
    old = flags[:i] + flags[i + 2:]  # the line before: static dispatch, no all-to-all backend
    with pytest.raises(ValueError, match="picks a different physical replica per rank"):
        _resolved(sgl, plan_2n, old, tmp_path)


@pytest.mark.parametrize("suffix", [".json", ".pt"])
@pytest.mark.parametrize("which", ["plan_1n", "plan_2n"])
def test_sglang_loads_the_plans_map_and_builds_the_static_table_we_model(request, sgl, tmp_path, which, suffix):
    if suffix == ".pt":
        pytest.importorskip("torch")
    plan = request.getfixturevalue(which)
    r = export(plan, "sglang", tmp_path / f"loc{suffix}")
    args = _resolved(sgl, plan, r.flags, tmp_path)
    model_config = sgl.ModelConfig.from_server_args(args)
    moe, S, E = plan.model.moe_layer_indices, plan.placement.slots_per_gpu, plan.model.num_experts
    mine = phy2log_of(plan)
    gpn = plan.cluster.gpus_per_node
    for rank in sorted({0, 1, plan.parallel.ep - 1, plan.parallel.ep // 2 + 1}):
        meta = sgl.load(model_config, rank)
        theirs = meta.physical_to_logical_map.cpu().numpy()
        assert theirs.shape == (plan.model.num_layers, plan.parallel.ep * S)
        assert np.array_equal(theirs[moe], mine)  # the plan's map in every MoE layer
        table = meta.logical_to_rank_dispatch_physical_map.cpu().numpy()[moe]  # [L, E] slots of this rank
        for l in range(len(moe)):
            ours = static_table(mine[l], S, E, gpn)[rank]
            assert (mine[l][table[l]] == np.arange(E)).all()  # every pick a replica of its expert
            cnt = np.bincount(mine[l], minlength=E)
            gpu_of = np.arange(len(mine[l])) // S
            on_gpu = np.array([(gpu_of[mine[l] == e] == rank).any() for e in range(E)])
            node_cnt = np.array([(gpu_of[mine[l] == e] // gpn == rank // gpn).sum() for e in range(E)])
            fixed = (cnt == 1) | on_gpu | ((node_cnt > 0) & (node_cnt < cnt))  # no draw involved
            assert np.array_equal(table[l][fixed], ours[fixed])


# ---- vLLM ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vl():
    _engine("vllm", VLLM_VERSION)
    import torch
    from vllm.distributed.eplb.eplb_state import EplbState, compute_logical_maps
    from vllm.distributed.eplb.policy.default import DefaultEplbPolicy
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return types.SimpleNamespace(
        torch=torch, policy=DefaultEplbPolicy, logical_maps=compute_logical_maps, EplbState=EplbState,
        parser=lambda: make_arg_parser(FlexibleArgumentParser()), EngineArgs=AsyncEngineArgs,
    )


CASES = [  # layers, experts, physical slots, groups, nodes, GPUs
    (6, 64, 72, 1, 1, 8),
    (6, 64, 80, 8, 2, 16),  # hierarchical
    (4, 256, 288, 8, 4, 32),  # DeepSeek-V3 on 4 × 8 with 32 redundant
    (3, 384, 448, 1, 8, 64),  # groups do not divide by nodes: the global policy
]


def _imbalance(phy2log_LP, w_LE, G):
    cnt = np.stack([np.bincount(row, minlength=w_LE.shape[1]) for row in phy2log_LP])
    per_slot = np.take_along_axis(w_LE, phy2log_LP, 1) / np.take_along_axis(cnt, phy2log_LP, 1)
    gpu = per_slot.reshape(len(phy2log_LP), G, -1).sum(-1)
    return gpu.max(1) / gpu.mean(1)


@pytest.mark.parametrize("case", CASES)
def test_vllm_rebalance_and_logical_maps_equal_our_eplb_on_tie_free_weights(vl, case):
    L, E, P, groups, nodes, G = case
    w = np.random.default_rng(1).permutation(L * E).reshape(L, E).astype(np.float64) * 7 + 1000  # distinct loads
    theirs = vl.policy.rebalance_experts(vl.torch.tensor(w), P, groups, nodes, G).numpy()
    ours = eplb(w, P, groups, nodes, G)
    assert np.array_equal(theirs, ours)
    t_l2p, t_cnt = vl.logical_maps(vl.torch.from_numpy(theirs), E)
    o_l2p, o_cnt = logical_maps(ours, E)
    assert np.array_equal(t_l2p.numpy(), o_l2p) and np.array_equal(t_cnt.numpy(), o_cnt)


@pytest.mark.parametrize("case", CASES)
def test_vllm_rebalance_gives_our_eplb_balance_on_skewed_counts(vl, case):
    L, E, P, groups, nodes, G = case
    w = np.round(np.random.default_rng(2).pareto(1.2, (L, E)) * 1000).astype(np.float64) + 1  # token counts
    theirs = vl.policy.rebalance_experts(vl.torch.tensor(w), P, groups, nodes, G).numpy()
    np.testing.assert_allclose(_imbalance(theirs, w, G), _imbalance(eplb(w, P, groups, nodes, G), w, G), rtol=1e-9)


def test_vllm_update_mapping_takes_the_exported_map(vl, plan_1n, tmp_path):
    torch = vl.torch
    out = tmp_path / "map.pt"
    export(plan_1n, "vllm", out)
    p2l = torch.load(out, weights_only=True)["physical_to_logical_map"]
    L, E = plan_1n.model.num_moe_layers, plan_1n.model.num_experts
    width = 1024  # EplbState.add_model: MAX_EXPERT_REDUNDANCY + 1 columns
    state = types.SimpleNamespace(
        physical_to_logical_map_buffer=torch.zeros_like(p2l), expert_load_pass=torch.ones(L, p2l.shape[1]),
        model=types.SimpleNamespace(num_logical_experts=E),
        logical_to_physical_map=torch.full((L, E, width), -1, dtype=torch.int64),
        logical_replica_count=torch.zeros(L, E, dtype=torch.int64),
    )
    state.physical_to_logical_map = state.physical_to_logical_map_buffer[:, :]
    eplb_state = types.SimpleNamespace(model_states={"m": state}, device=torch.device("cpu"))
    vl.EplbState.update_mapping(eplb_state, types.SimpleNamespace(compute_hash=lambda: "m"), p2l)
    mine = phy2log_of(plan_1n)
    assert np.array_equal(state.physical_to_logical_map.numpy(), mine)
    l2p, cnt = logical_maps(mine, E)
    assert np.array_equal(state.logical_replica_count.numpy(), cnt)
    assert np.array_equal(state.logical_to_physical_map.numpy()[:, :, : l2p.shape[2]], l2p)
    assert (state.logical_to_physical_map.numpy()[:, :, l2p.shape[2]:] == -1).all()


@pytest.mark.parametrize("which", ["plan_1n", "plan_2n"])
@pytest.mark.parametrize("to", ["vllm", "vllm-ascend"])
def test_vllm_parses_the_printed_serve_line(request, vl, which, to, tmp_path):
    plan = request.getfixturevalue(which)
    r = export(plan, to, tmp_path / ("m.json" if to == "vllm-ascend" else "m.pt"))
    argv = shlex.split(r.command_line)
    args = vl.parser().parse_args(["MODEL", *argv])
    e = vl.EngineArgs.from_cli_args(args)
    par, nodes = plan.parallel, plan.cluster.num_nodes
    assert e.enable_expert_parallel and (e.tensor_parallel_size, e.data_parallel_size) == (par.tp, par.dp)
    if nodes > 1:
        assert (e.data_parallel_size_local, e.data_parallel_address) == (par.dp // nodes, "HEAD_NODE_IP")
    else:
        assert e.data_parallel_size_local is None and e.data_parallel_address is None
    if to == "vllm":
        assert e.enable_eplb and e.eplb_config.num_redundant_experts == redundant_of(plan)
    else:
        cfg = e.additional_config["eplb_config"]
        assert cfg == {"expert_map_path": str(r.path), "num_redundant_experts": redundant_of(plan)}
