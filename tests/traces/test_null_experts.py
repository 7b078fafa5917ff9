"""Null choices (-1 = no expert: dynamic top-k, AdaMoE null experts) cost nothing, by hand.

The hand case: 1 MoE layer, E = 2 experts, k = 2, T = 10 tokens in one step on 2 GPUs (expert e on
GPU e, one slot each; tokens 0-4 start on GPU 0, 5-9 on GPU 1). With every choice real each
expert gets 10 tokens and each token sends one copy to the other GPU (10 copies). The null trace
nulls 6 of the 20 choices (30%): tokens 0, 1 drop expert 1 (remote for them), token 5 drops
expert 1 (home), tokens 2, 3 drop expert 0 (home), token 6 drops expert 0 (remote). So each
expert loses 3 tokens (10 -> 7) and 3 copies disappear (10 -> 7): 30% less of each.
"""

from __future__ import annotations

import numpy as np
import pytest

from planner.cachesim import CacheConfig, OffloadTiming, simulate_cache, step_counts
from planner.errors import InputError
from planner.simulator import choose_slots, simulate_arrays
from planner.traces import Trace, load_trace, save_trace
from planner.traces.nulls import with_null_choices
from planner.traces.stats import trace_stats

T = 10
SRC = np.array([0] * 5 + [1] * 5)
NULLS = {0: 1, 1: 1, 5: 1, 2: 0, 3: 0, 6: 0}  # token -> the expert it drops


def full_ids() -> np.ndarray:
    return np.tile(np.array([0, 1], dtype=np.int32), (1, T, 1))  # [1, 10, 2]


def null_ids() -> np.ndarray:
    ids = full_ids()
    for t, e in NULLS.items():
        ids[0, t, e] = -1  # column e holds expert e
    return ids


def test_hand_case_is_thirty_percent_null():
    tr = Trace(null_ids(), 2)
    assert tr.null_fraction() == pytest.approx(0.3) and tr.has_nulls
    assert not Trace(full_ids(), 2).has_nulls


def test_expert_counts_skip_nulls():
    full, null = Trace(full_ids(), 2, tokens_per_step=5), Trace(null_ids(), 2, tokens_per_step=5)
    assert full.counts().tolist() == [[10, 10]]
    assert null.counts().tolist() == [[7, 7]]  # 10 - 3 each
    # step 0 (tokens 0-4): expert 0 misses tokens 2, 3; expert 1 misses 0, 1
    assert null.counts_per_step().tolist() == [[[3, 3]], [[4, 4]]]


def _sim(ids: np.ndarray):
    """One step through the hand placement with linear costs: 0.1 ms per token of an expert,
    comm = total bytes (so every figure is proportional to what is counted)."""
    return simulate_arrays(
        np.array([[0, 1]]), 1, ids, np.zeros(T, dtype=np.int64), SRC,
        ffn_ms=lambda m: 0.1 * np.asarray(m, dtype=np.float64),
        comm_ms=lambda i_s, i_r, x_s, x_r: i_s.sum(axis=1) + x_s.sum(axis=1),
        token_bytes=100.0, num_experts=2, gpus_per_node=2,
    )


def test_simulator_drops_nulls_from_compute_and_traffic():
    full, null = _sim(full_ids()), _sim(null_ids())
    assert full.gpu_tokens_SLG[0, 0].tolist() == [10, 10]
    assert null.gpu_tokens_SLG[0, 0].tolist() == [7, 7]
    assert full.compute_ms_SL[0, 0] == pytest.approx(1.0)  # 10 tokens x 0.1 ms
    assert null.compute_ms_SL[0, 0] == pytest.approx(0.7)
    # dispatch + combine over NVLink: 2 x copies x 100 bytes
    assert full.intra_bytes_SL[0, 0] == pytest.approx(2 * 10 * 100)
    assert null.intra_bytes_SL[0, 0] == pytest.approx(2 * 7 * 100)
    assert null.comm_ms_SL[0, 0] == pytest.approx(0.7 * full.comm_ms_SL[0, 0])  # 700 vs 1000 bytes sent
    assert full.inter_bytes_SL.sum() == null.inter_bytes_SL.sum() == 0  # one node


@pytest.mark.parametrize("dispatch", ["even", "local-first", "nearest", "static"])
def test_a_null_choice_has_no_slot(dispatch):
    slot = choose_slots(null_ids()[0], SRC, np.array([0, 1]), 1, 2, dispatch, 2)
    assert (slot[null_ids()[0] < 0] == -1).all()
    assert (slot[null_ids()[0] >= 0] == null_ids()[0][null_ids()[0] >= 0]).all()  # expert e on slot e


def test_cache_loads_and_stalls_fall_with_the_nulls():
    """Batch-1 decode, no resident or cached expert: every real choice is one demand copy of
    1 ms, kernels free, no overlap: 20 copies and 20 ms of stall, against 14 and 14 ms."""
    timing = OffloadTiming(copy_ms=1.0, ffn_ms_M=np.zeros(3), pre_ms=0.0, other_ms=0.0, overlap=0.0,
                           expert_bytes=1e6)
    cfg = CacheConfig(resident_LE=np.zeros((1, 2), dtype=bool), dynamic_L=np.zeros(1, dtype=np.int64))
    step_T = np.arange(T)
    res = {}
    for name, ids in (("full", full_ids()), ("null", null_ids())):
        counts = step_counts(ids, step_T, 2)
        res[name] = simulate_cache(counts, cfg, timing)
    assert int(step_counts(null_ids(), step_T, 2).sum()) == 14
    assert res["full"].transfers == 20 and res["null"].transfers == 14
    assert res["full"].stall_ms_SL.sum() == pytest.approx(20.0)
    assert res["null"].stall_ms_SL.sum() == pytest.approx(14.0)


def test_npz_round_trip_keeps_nulls(tmp_path):
    w = np.where(null_ids() < 0, 0.0, 0.5).astype(np.float32)
    tr = Trace(null_ids(), 2, topk_weights=w)
    p = tmp_path / "nulls.npz"
    save_trace(tr, p)
    back = load_trace(p)
    assert np.array_equal(back.topk_ids, tr.topk_ids) and back.counts().tolist() == [[7, 7]]
    assert np.array_equal(back.topk_weights, w)


def test_bad_ids_name_the_field_and_the_rule(tmp_path):
    ids = null_ids()
    ids[0, 4, 0] = -2
    with pytest.raises(InputError, match=r"^t: topk_ids values must be in \[-1, 2\) \(-1 = no expert; found -2 at layer 0\)$"):
        Trace(ids, 2, source="t")
    ids[0, 4, 0] = 2
    with pytest.raises(InputError, match=r"found 2 at layer 0"):
        Trace(ids, 2, source="t")
    # a file without num_experts whose ids are -2 and 0: E is inferred as 1, and the message is
    # about the id, not "top_k (2) must be <= num_experts (1)"
    p = tmp_path / "neg.npz"
    np.savez(p, topk_ids=np.array([[[-2, 0]]], dtype=np.int16))
    with pytest.raises(InputError, match=r"neg.npz: topk_ids values must be in \[-1, 1\) \(-1 = no expert; found -2"):
        load_trace(p)


def test_nulls_may_repeat_in_a_token_but_experts_may_not():
    ids = np.array([[[-1, -1, 0]]], dtype=np.int32)
    assert Trace(ids, 4).counts().tolist() == [[1, 0, 0, 0]]
    with pytest.raises(InputError, match="must not repeat an expert"):
        Trace(np.array([[[1, -1, 1]]]), 4)


def test_with_null_choices_makes_an_exact_seeded_share():
    rng = np.random.default_rng(0)
    ids = np.stack([np.stack([rng.permutation(8)[:4] for _ in range(50)]) for _ in range(3)]).astype(np.int32)
    tr = Trace(ids, 8, topk_weights=np.ones(ids.shape, dtype=np.float32))
    a = with_null_choices(tr, 0.3, seed=1)
    assert a.null_fraction() == pytest.approx(round(0.3 * ids.size) / ids.size)
    assert a.counts().sum() == ids.size - round(0.3 * ids.size)
    assert np.array_equal(a.topk_ids, with_null_choices(tr, 0.3, seed=1).topk_ids)  # deterministic
    assert (a.topk_weights[a.topk_ids < 0] == 0).all() and (a.topk_weights[a.topk_ids >= 0] == 1).all()
    b = with_null_choices(tr, 0.75, seed=2, min_experts=1)
    assert (b.topk_ids[:, :, 0] >= 0).all() and (b.topk_ids[:, :, 1:] < 0).all()  # all but the first
    with pytest.raises(InputError, match=r"fraction must be in \[0, 0.75\] with top_k 4 and min_experts 1"):
        with_null_choices(tr, 0.8, min_experts=1)


def test_stats_report_the_null_share_and_skip_nulls():
    s = trace_stats(Trace(np.concatenate([null_ids(), null_ids()]), 2))
    assert s["null_fraction"] == pytest.approx(0.3)
    assert s["layers"][0]["imbalance"] == pytest.approx(1.0)  # 7 and 7


def test_recorder_turns_adamoe_null_experts_into_minus_one():
    torch = pytest.importorskip("torch")
    from planner.recorder import RoutingRecorder

    class NullRouter(torch.nn.Module):
        """AdaMoE-style: logits over 3 real + 2 null experts (ids 3, 4), top-2."""

        def forward(self, x):
            return x  # the input is the logits

    model = torch.nn.Module()
    model.router = NullRouter()
    model.forward = lambda x: model.router(x)
    rec = RoutingRecorder(model, routers=["router"], num_experts=3, top_k=2, record_weights=True, auto_step=False)
    logits = torch.tensor([
        [5.0, 4.0, 0.0, 0.0, 0.0],  # experts 0, 1
        [5.0, 0.0, 0.0, 4.0, 0.0],  # expert 0 and null 3
        [0.0, 0.0, 0.0, 5.0, 4.0],  # nulls 3, 4: no expert
    ])
    model(logits)
    rec.step()
    t = rec.trace()
    assert t.topk_ids[0].tolist() == [[0, 1], [0, -1], [-1, -1]]
    assert rec.counts().tolist() == [[2, 1, 0]] and t.counts().tolist() == [[2, 1, 0]]
    assert t.topk_weights[0, 1, 1] == 0 and t.topk_weights[0, 2].tolist() == [0, 0]


def test_plan_and_simulate_take_null_choices():
    """Placement (two nodes: the node and GPU search stages) and the replay run on a trace with
    30% null choices, and the replayed token copies fall with them."""
    from planner import api
    from planner.traces import default_trace_path

    tr = load_trace(default_trace_path("mixtral-8x7b")).select_steps(slice(0, 4))
    nul = with_null_choices(tr, 0.3, seed=0)
    out = {}
    for name, t in (("full", tr), ("null", nul)):
        p = api.plan("mixtral-8x7b", "h100-sxm", nodes=2, gpus_per_node=4, trace=t, time_limit=5)
        out[name] = api.simulate(p, t).summary()
    for key in ("intra_node_bytes_per_step", "inter_node_bytes_per_step"):
        assert out["null"][key] < out["full"][key]
    assert out["null"]["compute_ms"] < out["full"]["compute_ms"]


def test_trace_synth_null_fraction(tmp_path, capsys):
    from planner.cli import main

    out = tmp_path / "n.npz"
    args = ["trace", "synth", "--layers", "2", "--experts", "8", "--top-k", "2", "--tokens", "256",
            "--tokens-per-step", "64", "--null-fraction", "0.3", "--null-min-experts", "1", "--out", str(out)]
    assert main(args) == 0
    tr = load_trace(out)
    assert tr.null_fraction() == pytest.approx(round(0.3 * 1024) / 1024)  # 307 of 2·256·2 choices
    assert (tr.topk_ids[:, :, 0] >= 0).all()  # min_experts 1: the first choice stays
    assert main(args[:-2] + ["--null-fraction", "0.6", "--out", str(tmp_path / "m.npz")]) == 2  # the last value counts
    assert "fraction must be in [0, 0.5]" in capsys.readouterr().err


def test_validation_refuses_null_choices_in_one_line():
    """Validation executes exactly k experts per token: a trace with nulls is refused, naming it."""
    full = Trace(full_ids(), num_experts=2, step=np.zeros(T, np.int64))
    full.refuse_nulls("validate (trace t)")  # no nulls: nothing to refuse
    nul = Trace(null_ids(), num_experts=2, step=np.zeros(T, np.int64))
    with pytest.raises(InputError, match=r"validate \(trace t\): 30\.0% of topk_ids are -1"):
        nul.refuse_nulls("validate (trace t)")
