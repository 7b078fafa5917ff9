"""Plans from a trace with sequences: the workload forms the steps (planner.traces.steps), and
``simulate`` replays the same steps."""

from __future__ import annotations

import numpy as np

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
