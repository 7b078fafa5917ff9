"""Streaming a per-token trace larger than the memory budget: exact counts of every step, a
deterministic sample of whole steps, the loader's rules and bounded memory."""

import tracemalloc

import numpy as np
import pytest

import planner
from planner.errors import InputError
from planner.traces import load_trace, save_trace
from planner.traces import stream as st
from planner.traces.stream import BYTES_PER_ID, StreamedTrace, kept_steps, stream_npz


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    tr = planner.synth_trace(num_layers=3, num_experts=16, top_k=4, num_tokens=40_000, tokens_per_step=1000,
                             num_ranks=4, weights=True, seed=1, model_name="toy")
    path = tmp_path_factory.mktemp("stream") / "big.npz"
    save_trace(tr, path)
    return path, load_trace(path)


def test_kept_steps_are_evenly_spaced_and_fit():
    sizes = np.full(40, 1000)
    pos = kept_steps(sizes, 8000)
    assert pos.tolist() == [0, 6, 11, 17, 22, 28, 33, 39] and sizes[pos].sum() <= 8000
    assert kept_steps(sizes, 10).tolist() == [0, 39]  # never fewer than two: plan + held out
    assert kept_steps(np.array([5]), 1).tolist() == [0]


def test_streamed_counts_are_exact_and_sample_is_the_files(big, monkeypatch):
    path, full = big
    monkeypatch.setattr(st, "CHUNK_TOKENS", 3000)  # many chunks per layer, not aligned with steps
    tr = stream_npz(path, max_bytes=8000 * 3 * 4 * BYTES_PER_ID)
    assert isinstance(tr, StreamedTrace) and tr.total_tokens == 40_000
    np.testing.assert_array_equal(tr.recorded_counts, full.counts_per_step())
    np.testing.assert_array_equal(tr.recorded_steps, full.steps)
    assert tr.steps.tolist() == [0, 6, 11, 17, 22, 28, 33, 39] and tr.num_tokens == 8000
    ref = full.select_steps(tr.steps)
    np.testing.assert_array_equal(tr.topk_ids, ref.topk_ids)
    np.testing.assert_array_equal(tr.topk_weights, ref.topk_weights)
    np.testing.assert_array_equal(tr.source_rank, ref.source_rank)
    assert "from 8 of the 40 steps" in tr.note()


def test_load_trace_streams_above_the_budget(big, monkeypatch):
    path, full = big
    monkeypatch.setenv(st.MEMORY_ENV, str(4000 * 3 * 4 * BYTES_PER_ID / 1e9))
    tr = load_trace(path)
    assert isinstance(tr, StreamedTrace) and tr.num_tokens == 4000
    monkeypatch.setenv(st.MEMORY_ENV, "0")
    with pytest.raises(InputError, match=r"MOE_PLANNER_TRACE_MEMORY_GB must be > 0 GB"):
        load_trace(path)
    monkeypatch.delenv(st.MEMORY_ENV)
    assert type(load_trace(path)) is planner.traces.Trace  # default budget: loaded whole


def test_stream_applies_the_trace_rules(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "CHUNK_TOKENS", 7)
    ids = np.tile(np.array([[0, 1], [2, 3]], np.uint8), (2, 20, 1))  # [2, 40, 2]
    ids[1, 33] = [5, 9]
    np.savez(tmp_path / "bad.npz", topk_ids=ids, num_experts=np.array(8))
    with pytest.raises(InputError, match=r"bad.npz: topk_ids values must be in \[-1, 8\) \(-1 = no expert; found 9 at layer 1\)"):
        stream_npz(tmp_path / "bad.npz", max_bytes=1)
    ids[1, 33] = [4, 4]
    np.savez(tmp_path / "dup.npz", topk_ids=ids, num_experts=np.array(8))
    with pytest.raises(InputError, match=r"expert 4 twice for token 33 at layer 1"):
        stream_npz(tmp_path / "dup.npz", max_bytes=1)
    np.savez(tmp_path / "extra.npz", topk_ids=ids, oops=np.zeros(3))
    with pytest.raises(InputError, match=r"unknown keys oops"):
        stream_npz(tmp_path / "extra.npz", max_bytes=1)


def test_streaming_memory_stays_bounded(tmp_path, monkeypatch):
    # 8 layers × 200,000 tokens × 8 ids: 51 MB as int32, ~154 MB to load and validate whole
    rng = np.random.default_rng(0)
    L, T, k, E = 8, 200_000, 8, 64
    ids = np.argsort(rng.random((L, T, E), dtype=np.float32), axis=-1)[..., :k].astype(np.uint8)
    path = tmp_path / "large.npz"
    np.savez_compressed(path, topk_ids=ids, step=(np.arange(T) // 2000).astype(np.uint16), num_experts=np.array(E))
    counts = np.bincount((np.arange(L)[:, None, None] * E + ids).ravel(), minlength=L * E).reshape(L, E)
    del ids
    monkeypatch.setattr(st, "CHUNK_TOKENS", 1 << 15)
    tracemalloc.start()
    tr = stream_npz(path, max_bytes=5_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 15e6, peak  # vs ~154 MB whole; the sample itself is ≤ 5 MB
    np.testing.assert_array_equal(tr.recorded_counts.sum(axis=0), counts)


def test_plan_from_a_streamed_trace_balances_on_every_planning_step(big, monkeypatch):
    path, full = big
    monkeypatch.setenv(st.MEMORY_ENV, str(6000 * 3 * 4 * BYTES_PER_ID / 1e9))
    model = planner.load_model("qwen3-30b-a3b").model_copy(update={"num_experts": 16, "num_layers": 3, "top_k": 4,
                                                                  "first_k_dense": 0})
    pr = planner.prepare(model, nodes=1, gpus_per_node=4, trace=str(path), train_fraction=0.5)
    assert pr.trace_label == "big.npz (streamed)" and pr.trace.num_steps == 6
    first_eval = pr.eval_trace.steps[0]
    np.testing.assert_array_equal(pr.plan_counts_LE, full.counts_per_step()[full.steps < first_eval].sum(axis=0))
    from planner.api import solve

    p = solve(pr)
    assert any(n.startswith("streamed trace (40000 tokens, 40 steps") for n in p.predicted.notes)
