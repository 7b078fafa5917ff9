"""Steps formed from sequences, worked out by hand (planner.traces.steps)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.errors import InputError
from planner.traces import Trace, decode_steps, prefill_steps
from planner.traces.steps import split_sequences


def _trace(seq_id, pos=None):
    """One layer, E = 8, k = 1; token t chose expert t mod 8 (so ids identify tokens)."""
    T = len(seq_id)
    ids = (np.arange(T) % 8).reshape(1, T, 1)
    return Trace(ids, 8, seq_id=np.array(seq_id), pos=None if pos is None else np.array(pos))


def _steps(tr):
    """[(step, rank, seq, pos), ...] in trace order."""
    return list(zip(tr.step.tolist(), tr.source_rank.tolist(), tr.seq_id.tolist(), tr.pos.tolist(), strict=True))


# sequences in arrival order: 5 (3 tokens), 2 (2 tokens), 9 (4 tokens), 1 (1 token); file order interleaved
SEQ = [5, 2, 5, 9, 2, 5, 9, 9, 9, 1]
POS = [0, 0, 1, 0, 1, 2, 1, 2, 3, 0]


def test_prefill_whole_prompts_up_to_the_budget():
    tr = prefill_steps(_trace(SEQ, POS), token_budget=5)
    # step 0: seq 5 (3) + seq 2 (2) = 5 tokens; seq 9 (4) does not fit the room left (0) -> step 1;
    # seq 1 (1) joins it (4 + 1 = 5)
    assert [(s, q) for s, _, q, _ in _steps(tr)] == [(0, 5)] * 3 + [(0, 2)] * 2 + [(1, 9)] * 4 + [(1, 1)]
    assert tr.pos.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 0]
    assert tr.num_tokens == 10


def test_prefill_chunks_a_prompt_longer_than_the_budget():
    tr = prefill_steps(_trace(SEQ, POS), token_budget=3)
    # seq 5 fills step 0; seq 2 (2) opens step 1, seq 9 (4) does not fit the room left (1):
    # step 2 takes its first 3 tokens, its last one opens step 3, which seq 1 joins
    assert [(s, q, p) for s, _, q, p in _steps(tr)] == [
        (0, 5, 0), (0, 5, 1), (0, 5, 2), (1, 2, 0), (1, 2, 1),
        (2, 9, 0), (2, 9, 1), (2, 9, 2), (3, 9, 3), (3, 1, 0),
    ]


def test_prefill_deals_prompts_to_ranks():
    rr = prefill_steps(_trace(SEQ, POS), token_budget=10, ranks=2)
    # one step; round-robin by arrival: 5 -> 0, 2 -> 1, 9 -> 0, 1 -> 1; tokens sorted by rank
    assert [(r, q) for _, r, q, _ in _steps(rr)] == [(0, 5)] * 3 + [(0, 9)] * 4 + [(1, 2)] * 2 + [(1, 1)]
    ll = prefill_steps(_trace(SEQ, POS), token_budget=10, ranks=2, deal="least-loaded")
    # least-loaded: 5 -> 0 (0 vs 0), 2 -> 1 (3 vs 0), 9 -> 1 (3 vs 2), 1 -> 0 (3 vs 6)
    assert [(r, q) for _, r, q, _ in _steps(ll)] == [(0, 5)] * 3 + [(0, 1)] + [(1, 2)] * 2 + [(1, 9)] * 4


def test_prefill_per_rank_queues_chunk_a_long_prompt_over_steps():
    # budget 4 over 2 ranks: 2 tokens per rank a step. Round-robin: rank 0 queues seq 5 (3) then
    # seq 9 (4), rank 1 seq 2 (2) then seq 1 (1). Rank 0: step 0 = 5:0,1; step 1 = 5:2, 9:0;
    # step 2 = 9:1,2; step 3 = 9:3. Rank 1: step 0 = 2:0,1; step 1 = 1:0; then idle. Steps 2
    # and 3 have one rank of two busy: half, kept (the drain is fewer than half).
    tr = prefill_steps(_trace(SEQ, POS), token_budget=4, ranks=2, per_rank=True)
    assert _steps(tr) == [
        (0, 0, 5, 0), (0, 0, 5, 1), (0, 1, 2, 0), (0, 1, 2, 1),
        (1, 0, 5, 2), (1, 0, 9, 0), (1, 1, 1, 0),
        (2, 0, 9, 1), (2, 0, 9, 2), (3, 0, 9, 3),
    ]
    # least-loaded: 5 -> 0, 2 -> 1, 9 -> 1 (3 vs 2 tokens dealt), 1 -> 0 (3 vs 6). Rank 0 queues
    # 5:0-2, 1:0 (two steps); rank 1 queues 2:0-1, 9:0-3 (three steps).
    ll = prefill_steps(_trace(SEQ, POS), token_budget=4, ranks=2, deal="least-loaded", per_rank=True)
    assert _steps(ll) == [
        (0, 0, 5, 0), (0, 0, 5, 1), (0, 1, 2, 0), (0, 1, 2, 1),
        (1, 0, 5, 2), (1, 0, 1, 0), (1, 1, 9, 0), (1, 1, 9, 1),
        (2, 1, 9, 2), (2, 1, 9, 3),
    ]


def test_prefill_per_rank_drops_the_drain():
    # 4 ranks, 1 token each a step: seq 0 (5 tokens) keeps rank 0 busy for 5 steps, the others
    # finish at step 0; steps 1-4 have 1 of 4 ranks busy (fewer than half): dropped
    tr = prefill_steps(_trace([0] * 5 + [1, 2, 3]), token_budget=4, ranks=4, per_rank=True)
    assert tr.num_steps == 1 and tr.num_tokens == 4
    assert sorted(zip(tr.source_rank.tolist(), tr.seq_id.tolist(), strict=True)) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_decode_replaces_a_finished_sequence():
    tr = decode_steps(_trace(SEQ, POS), batch=2)
    # slots: seq 5 in slot 0 at steps 0-2, seq 2 in slot 1 at steps 0-1; seq 9 takes slot 1 at
    # step 2 (steps 2-5), seq 1 takes slot 0 at step 3
    got = [(s, q, p) for s, _, q, p in _steps(tr)]
    assert got == [
        (0, 5, 0), (0, 2, 0), (1, 5, 1), (1, 2, 1), (2, 5, 2), (2, 9, 0),
        (3, 9, 1), (3, 1, 0), (4, 9, 2), (5, 9, 3),
    ]
    assert tr.num_steps == 6


def test_decode_ranks_round_robin_and_by_slot():
    rr = decode_steps(_trace(SEQ, POS), batch=2, ranks=2)
    rank_of = {q: r for _, r, q, _ in _steps(rr)}
    assert rank_of == {5: 0, 2: 1, 9: 0, 1: 1}  # arrival order mod 2
    ll = decode_steps(_trace(SEQ, POS), batch=2, ranks=2, deal="least-loaded")
    rank_of = {q: r for _, r, q, _ in _steps(ll)}
    assert rank_of == {5: 0, 2: 1, 9: 1, 1: 0}  # the rank of the slot each fills


def test_batch_one_decodes_sequences_one_after_another():
    tr = decode_steps(_trace(SEQ, POS), batch=1)
    assert tr.seq_id.tolist() == [5, 5, 5, 2, 2, 9, 9, 9, 9, 1]
    assert tr.step.tolist() == list(range(10))
    # the ids follow their tokens: token 0 (expert 0) of seq 5 first, then token 2, then 5
    assert tr.topk_ids[0, :3, 0].tolist() == [0, 2, 5]


def test_without_pos_file_order_is_the_order_in_a_sequence():
    tr = decode_steps(_trace([3, 3, 1, 3]), batch=1)
    assert tr.seq_id.tolist() == [3, 3, 3, 1]
    assert tr.topk_ids[0, :, 0].tolist() == [0, 1, 3, 2]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: prefill_steps(t, 0), "token_budget must be > 0 (got 0)"),
        (lambda t: decode_steps(t, 2, ranks=0), "ranks must be > 0 (got 0)"),
        (lambda t: decode_steps(t, 2, deal="random"), "deal must be one of round-robin, least-loaded"),
        (lambda t: decode_steps(Trace(t.topk_ids, 8), 2), "decode steps need seq_id"),
    ],
)
def test_errors(call, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(_trace(SEQ, POS))


def test_decode_drops_the_drain_and_cuts_a_batch_larger_than_the_trace():
    # 4 sequences of lengths 3, 2, 4, 1 at batch 4: steps 0..3 hold 4, 3, 2, 1 busy slots
    # (seq 1 ends after step 0, seq 2 after 1, seq 5 after 2); fewer than half busy: step 3 dropped
    tr = decode_steps(_trace(SEQ, POS), batch=4)
    assert tr.step.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert 9 in tr.seq_id.tolist() and tr.num_tokens == 9  # seq 9's last token (pos 3) fell in the drain
    # batch 10 > 4 sequences: cut to 4, the same steps
    assert decode_steps(_trace(SEQ, POS), batch=10).step.tolist() == tr.step.tolist()


def test_split_sequences_into_consecutive_parts():
    # lengths 5, 2, 1 into parts of at most 2: 5 -> 2 + 2 + 1, 2 -> 2, 1 -> 1
    starts, lengths = split_sequences(np.array([0, 5, 7]), np.array([5, 2, 1]), 2)
    assert starts.tolist() == [0, 2, 4, 5, 7]
    assert lengths.tolist() == [2, 2, 1, 2, 1]
    # at most 3: 5 -> 3 + 2 (near-equal, the longer first)
    assert split_sequences(np.array([0]), np.array([5]), 3)[1].tolist() == [3, 2]
    with pytest.raises(InputError, match="max_len must be > 0"):
        split_sequences(np.array([0]), np.array([3]), 0)


def test_decode_splits_sequences_when_the_batch_is_larger_than_the_trace():
    # batch 8 > 4 sequences, 10 tokens: parts of at most 10 // 8 = 1 token, so every token is a
    # request: parts 0-2 = seq 5 (pos 0-2), 3-4 = seq 2, 5-8 = seq 9, 9 = seq 1. Parts 0-7 fill
    # the 8 slots at step 0; step 1 holds parts 8 and 9 (2 of 8 busy: the drain, dropped)
    tr = decode_steps(_trace(SEQ, POS), batch=8, ranks=2, split=True)
    # parts renumbered in arrival order and dealt round-robin: rank 0 holds parts 0, 2, 4, 6
    assert _steps(tr) == [
        (0, 0, 0, 0), (0, 0, 2, 2), (0, 0, 4, 1), (0, 0, 6, 1),
        (0, 1, 1, 1), (0, 1, 3, 0), (0, 1, 5, 0), (0, 1, 7, 2),
    ]
    # the tokens are the trace's own (expert = file index mod 8): (seq 5, pos 2) is token 5,
    # (seq 2, pos 1) token 4, (seq 9, pos 1) token 6, ...
    assert tr.topk_ids[0, :, 0].tolist() == [0, 5, 4, 6, 2, 1, 3, 7]
    # a batch the sequences fill is not split
    same = decode_steps(_trace(SEQ, POS), batch=2, split=True)
    assert _steps(same) == _steps(decode_steps(_trace(SEQ, POS), batch=2))
