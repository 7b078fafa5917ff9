"""Plans from a trace with sequences: the workload forms the steps (planner.traces.steps), and
``simulate`` replays the same steps."""

from __future__ import annotations

import numpy as np
import pytest

import planner
from planner.specs.workload import Workload
from planner.traces import Trace
from planner.traces.steps import workload_steps
from tests.conftest import make_model


def _seq_trace(model, n_seq=24, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 40, n_seq)
    T = int(lengths.sum())
    seq = np.repeat(np.arange(n_seq), lengths)
    pos = np.concatenate([np.arange(n) for n in lengths])
    L, E, k = model.num_moe_layers, model.num_experts, model.top_k
    ids = np.argsort(rng.random((L, T, E)), axis=2)[:, :, :k]
    return Trace(ids, E, seq_id=seq, pos=pos, step=np.zeros(T, np.int64))


def test_workload_steps_by_mode():
    m = make_model()
    tr = _seq_trace(m)
    pre, note = workload_steps(tr, Workload(mode="prefill", tokens_per_step=100), ranks=2)
    sizes = np.bincount(pre.step_index)
    assert sizes.max() <= 100 and pre.num_tokens == tr.num_tokens
    assert "prefill steps of whole prompts up to 100 tokens" in note and "2 data-parallel ranks" in note
    dec, note = workload_steps(tr, Workload(mode="decode", tokens_per_step=4), ranks=2)
    assert np.bincount(dec.step_index).max() == 4 and "4 concurrent sequences" in note
    train, _ = workload_steps(tr, Workload(mode="train", global_batch=2, seq_len=64), ranks=2)
    assert np.bincount(train.step_index).max() <= 128
    same, note = workload_steps(Trace(tr.topk_ids, tr.num_experts), Workload(mode="prefill"), ranks=2)
    assert note is None and same.num_steps == 1


def test_plan_and_simulate_form_the_same_steps():
    m = make_model()
    tr = _seq_trace(m)
    p = planner.plan(m, trace=tr, ep=2, mode="prefill", tokens_per_step=120, time_limit=20)
    note = next(n for n in p.predicted.notes if n.startswith("steps formed from the trace's 24 sequences"))
    expected_steps = workload_steps(tr, p.workload, p.cluster.num_gpus)[0].num_steps
    assert f"({expected_steps} steps)" in note
    rep = planner.simulate(p, tr)
    assert any(n == note for n in rep.notes)
    assert rep.result.tokens_S.shape == (expected_steps,)


def test_moe_figures_follow_the_batch_and_the_mode():
    """The trace says which experts tokens pick; the workload says how many a step holds:
    decode at batch 4 and 16, and prefill, give different steps and MoE figures."""
    m = make_model()
    tr = _seq_trace(m, n_seq=120)
    kw = dict(trace=tr, ep=2, baseline="eplb", prompt_len=64, output_len=24)
    small = planner.plan(m, mode="decode", batch=4, **kw)
    large = planner.plan(m, mode="decode", batch=16, **kw)
    assert small.workload.batch == 4 and large.workload.batch == 16
    assert small.predicted.tokens_per_step == pytest.approx(4, abs=0.5)
    # held-out steps: the last quarter, where the trace's end drains up to half the slots
    assert 12 <= large.predicted.tokens_per_step <= 16
    assert large.predicted.moe_layer_ms > small.predicted.moe_layer_ms
    pre = planner.plan(m, mode="prefill", tokens_per_step=200, **{k: v for k, v in kw.items() if k != "output_len"})
    assert 100 < pre.predicted.tokens_per_step <= 200  # whole prompts (8-39 tokens) up to 200 per step
    assert pre.predicted.moe_layer_ms > large.predicted.moe_layer_ms


def test_decode_without_sequences_regroups_tokens_to_the_batch():
    m = make_model()
    seq = _seq_trace(m)
    flat = Trace(seq.topk_ids, seq.num_experts, step=np.arange(seq.num_tokens) // 50)  # file steps of 50
    out, note = workload_steps(flat, Workload(mode="decode", batch=8), ranks=2)
    assert np.bincount(out.step_index).tolist() == [8] * (flat.num_tokens // 8)
    assert note.startswith(f"the trace has no sequences: its {flat.num_tokens} tokens regrouped in file order")
    assert out.source_rank[:4].tolist() == [0, 1, 0, 1]
    # the same tokens, in order: the first step is the file's first 8 tokens
    assert np.array_equal(out.topk_ids[:, :8], flat.topk_ids[:, :8])
    # fewer tokens than one step: 4 steps drawn with replacement, deterministic for the seed
    few = Trace(seq.topk_ids[:, :5], seq.num_experts)
    a, note = workload_steps(few, Workload(mode="decode", batch=8), ranks=1, seed=3)
    b, _ = workload_steps(few, Workload(mode="decode", batch=8), ranks=1, seed=3)
    assert a.num_steps == 4 and np.array_equal(a.topk_ids, b.topk_ids) and "drawn with replacement" in note
    # a batch the search found (not stated): the file's steps are kept, and the note says so
    kept, note = workload_steps(flat, Workload(mode="decode", batch=8, batch_searched=True), ranks=2)
    assert kept is flat and "its file's steps (48 tokens on average) are replayed, not the batch of 8" in note  # 582 / 12
    # no batch (train), or tokens sampled from recorded counts: the file's steps are kept
    assert workload_steps(flat, Workload(mode="train"), ranks=2) == (flat, None)
    assert workload_steps(flat, Workload(mode="decode", batch=8), ranks=2, regroup=False) == (flat, None)


def test_prefill_default_budget_is_sglang_chunked_prefill():
    m = make_model()
    tr = _seq_trace(m, n_seq=400)  # 400 prompts of 8-39 tokens: more than one 8192-token step
    out, note = workload_steps(tr, Workload(mode="prefill"), ranks=8)
    assert np.bincount(out.step_index).max() <= 8192 < tr.num_tokens
    assert "up to 8192 tokens (SGLang's default --chunked-prefill-size)" in note


def test_decode_batch_larger_than_the_trace_splits_its_sequences():
    m = make_model()
    tr = _seq_trace(m)  # 24 sequences of 8-39 tokens
    T = tr.num_tokens
    dec, note = workload_steps(tr, Workload(mode="decode", batch=60), ranks=4)
    sizes = np.bincount(dec.step_index)
    # parts of at most T // 60 tokens keep the 60 slots busy until the drain
    assert sizes.max() == 60 and (sizes == 60).sum() >= T // 60 - T // 60 // 2
    assert "the batch 60 is larger than the trace's 24 sequences" in note
    assert f"parts of at most {T // 60} tokens" in note
    # a part is a request: consecutive positions of one sequence, one per step
    for part in np.unique(dec.seq_id)[:5]:
        sel = dec.seq_id == part
        assert np.all(np.diff(dec.step[sel]) == 1) and np.all(np.diff(dec.pos[sel]) == 1)
    # a batch the trace cannot make 4 steps of is cut to T // 4 (planned on some, scored on others)
    big, note = workload_steps(tr, Workload(mode="decode", batch=10_000), ranks=4)
    assert np.bincount(big.step_index).max() == T // 4 and big.num_steps >= 3
    assert f"the batch 10000 is cut to {T // 4} (its {T} tokens make 4 steps)" in note


def test_prefill_budget_per_rank_caps_every_rank_and_reaches_the_plan():
    m = make_model()
    tr = _seq_trace(m)  # 24 prompts of 8-39 tokens
    out, note = workload_steps(tr, Workload(mode="prefill", tokens_per_step=40, prefill_budget="per-rank"), ranks=4)
    per_rank = np.bincount(out.step_index * 4 + out.source_rank)
    assert per_rank.max() == 10  # 40 tokens over 4 ranks: 10 a rank a step, full while queues last
    assert "each rank takes 10 tokens of its own queue a step" in note
    whole, _ = workload_steps(tr, Workload(mode="prefill", tokens_per_step=40), ranks=4)
    assert np.bincount(whole.step_index * 4 + whole.source_rank).max() > 10  # a whole prompt on one rank
    p = planner.plan(m, trace=tr, ep=4, mode="prefill", tokens_per_step=40, prefill_budget="per-rank", time_limit=20)
    assert p.workload.prefill_budget == "per-rank"
    sim = planner.simulate(p, trace=tr)  # simulate forms the plan's steps again: 8 GPUs, 5 tokens a rank
    assert sim.result.tokens_S.max() == 40 and any("each rank takes 5 tokens" in n for n in sim.notes)
