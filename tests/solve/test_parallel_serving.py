"""The serving batch search (planner/solve/parallel.py): the largest decode batch within memory
and the per-output-token target, worked out by hand on a tiny model, and which bound binds."""

import math

import pytest

from planner.cost.serve_step import serve_step
from planner.errors import InfeasibleError, InputError
from planner.solve.parallel import search, search_workload
from planner.specs.cluster import ClusterSpec
from planner.specs.workload import Workload
from tests.conftest import make_model

GIB = 2**30
ONE = {"tp": 1, "pp": 1, "ep": 1, "etp": 1}  # one GPU, nothing to choose but the batch

# tiny-moe (tests/conftest.py): h 64, 3 MoE layers, 8 experts top-2, f 32, GQA 4 heads / 2 KV
# heads of 16, bf16. Per decode sequence on one GPU (planner/cost/memory.py):
#   KV cache per token  = 3 layers · 2 (K, V) · 2 heads · 16 · 2 B             =    384 B
#   at prompt 100 + output 28 = 128 tokens                                      = 49,152 B
#   activations (1 new token) = 2 B · (2·64 + (4 + 2·2)·16 + 2·2·64 + 3·2·32)   =  1,408 B
#   dispatch buffers           = 2 · 1 token · 2 (top-k) · 64 · 2 B              =    512 B
#   per sequence                                                                = 51,072 B
PER_SEQ = 51_072
# fp8 KV: 24,576 B of cache per sequence, the rest unchanged: 26,496 B
PER_SEQ_FP8 = 24_576 + 1_408 + 512


@pytest.fixture(scope="module")
def tiny():
    return make_model()


def _weights(m) -> int:
    # 8 experts · 3·64·32 · 2 B · 3 layers = 294,912 B, plus the non-expert weights
    return 8 * 3 * 64 * 32 * 2 * 3 + int(m.non_expert_bytes)


def _hw(hw, budget_bytes: float):
    """``hw`` with memory such that the search's budget (memory less 4 GiB reserved) is ``budget_bytes``."""
    return hw.model_copy(update={"hbm_gib": 4 + budget_bytes / GIB, "hbm_usable_gib": None})


def _one_gpu():
    return ClusterSpec(hardware="h100-sxm", num_nodes=1, gpus_per_node=1)


def test_memory_bound_batch_by_hand(tiny, hw):
    # room for 100 sequences and 1,000 B more: the 101st needs another 51,072 B
    small = _hw(hw, _weights(tiny) + 100 * PER_SEQ + 1_000)
    r = search(tiny, small, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE)
    assert r.best.sequences == 100 and r.best.binding == "memory"
    assert r.best.memory.kv_cache == 100 * 49_152
    assert r.best.memory.total == pytest.approx(_weights(tiny) + 100 * PER_SEQ)
    note = r.notes[0]
    assert note.startswith("decode batch 100 (100 per data-parallel rank × 1): memory binds — 101 per rank")
    assert "at 128 tokens in bf16" in note
    # fp8 KV: (100 · 51,072 + 1,000) / 26,496 = 192.8 → 192 sequences
    r8 = search(tiny, small, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE, kv_dtype="fp8")
    assert r8.best.sequences == (100 * PER_SEQ + 1_000) // PER_SEQ_FP8 == 192
    assert r8.best.memory.kv_cache == 192 * 24_576


def test_latency_bound_batch(tiny, hw):
    # memory holds 100 sequences (above); the step at 40 and 41 sequences, timed at the mean
    # context 100 + 28/2 = 114 tokens, straddle the target: the batch is 40 and latency binds
    small = _hw(hw, _weights(tiny) + 100 * PER_SEQ + 1_000)

    def tpot(seqs):
        return serve_step(tiny, small, mode="decode", num_gpus=1, gpus_per_node=1, tp=1, pp=1, ep=1,
                          sequences=seqs, seq_len=114).latency_per_token_ms

    assert tpot(40) < tpot(41) < tpot(100)
    target = (tpot(40) + tpot(41)) / 2
    r = search(tiny, small, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE,
               latency_target_ms=target)
    assert r.best.sequences == 40 and r.best.binding == "latency"
    assert r.best.latency_ms == pytest.approx(tpot(40))
    assert f"41 per rank predicts {tpot(41):.2f} ms (memory would hold 100 per rank)" in r.notes[0]
    # a target above the step at the memory bound: memory binds again
    r = search(tiny, small, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE,
               latency_target_ms=tpot(100) * 1.01)
    assert r.best.sequences == 100 and r.best.binding == "memory"
    # a stated batch is kept as stated
    r = search(tiny, small, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE, global_batch=7)
    assert r.best.sequences == 7 and r.best.binding == "stated"


def test_no_batch_fits_names_the_fields(tiny, hw):
    # weights fit, half a sequence more does not: infeasible, naming what shrinks the cache
    small = _hw(hw, _weights(tiny) + PER_SEQ // 2)
    with pytest.raises(InfeasibleError, match="with one sequence per data-parallel rank") as e:
        search(tiny, small, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE)
    flags = e.value.for_flags()
    assert "--kv-dtype fp8" in flags and "--output-len" in flags and "--gpus-per-node" in flags
    # fp8 alone does not rescue it: a sequence needs 26,496 B against 25,536 B of room
    with pytest.raises(InfeasibleError):
        search(tiny, small, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE, kv_dtype="fp8")
    ok = search(tiny, small, _one_gpu(), mode="decode", seq_len=100, output_len=10, fixed=ONE, kv_dtype="fp8")
    # fp8 and a shorter output do: 110 tokens · 192 B + 1,408 B + 512 B = 23,040 B fit in 25,536 B, once
    assert ok.best.sequences == 1 and ok.best.binding == "memory"
    # weights alone over the budget: only more GPUs (or degrees) help
    with pytest.raises(InfeasibleError, match="the weights alone need") as e:
        search(tiny, _hw(hw, _weights(tiny) / 2), _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE)
    assert "--gpus-per-node" in e.value.for_flags() and "kv-dtype" not in e.value.for_flags()


def test_tpot_target_missed_at_one_sequence_names_the_target(tiny, hw):
    with pytest.raises(InfeasibleError, match="per-output-token latency target") as e:
        search(tiny, hw, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE, latency_target_ms=1e-3)
    assert "--tpot-ms" in e.value.for_flags()


def test_decode_ttft_is_a_prefill_of_one_prompt_per_rank(tiny, hw):
    pf = serve_step(tiny, hw, mode="prefill", num_gpus=1, gpus_per_node=1, tp=1, pp=1, ep=1, sequences=1,
                    seq_len=100).step_ms
    ok = search(tiny, hw, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE, ttft_ms=pf * 1.01)
    assert ok.best.sequences >= 1
    with pytest.raises(InfeasibleError, match="time-to-first-token") as e:
        search(tiny, hw, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE, ttft_ms=pf * 0.99)
    assert "--ttft-ms" in e.value.for_flags()


def test_request_rate_note_counts_the_copies(tiny, hw):
    r = search(tiny, hw, _one_gpu(), mode="decode", seq_len=100, output_len=28, fixed=ONE, global_batch=64,
               request_rate=1e9)
    rate = r.best.tokens_per_s / 28  # requests/s: tokens/s over the 28 output tokens of each
    copies = math.ceil(1e9 / rate)
    (note,) = [n for n in r.notes if n.startswith("request rate")]
    assert f"the plan sustains {rate:,.2f} requests/s" in note and f"need {copies} such deployment(s)" in note


def test_search_workload_resolves_lengths_and_targets(tiny, hw):
    w = Workload(mode="decode", seq_len=100, tpot_ms=5.0)
    found, w2 = search_workload(tiny, hw, _one_gpu(), w, fixed=ONE, mean_sequence_len=27.6)
    assert w2.prompt_len == 100 and w2.output_len == 28 and w2.batch == found.best.sequences
    assert "output 28 (the mean length of the trace's sequences)" in found.notes[0]
    _, w3 = search_workload(tiny, hw, _one_gpu(), Workload(mode="decode", prompt_len=50, output_len=7), fixed=ONE)
    assert (w3.prompt_len, w3.output_len) == (50, 7)
    _, w4 = search_workload(tiny, hw, _one_gpu(), Workload(mode="decode"), fixed=ONE)
    assert w4.output_len == 1024  # no trace sequences, none stated: the default
    with pytest.raises(InputError, match="latency_target_ms .* is the older name of tpot_ms"):
        search_workload(tiny, hw, _one_gpu(), w, fixed=ONE, latency_target_ms=6.0)
    with pytest.raises(InputError, match="tpot_ms applies to mode decode"):
        search_workload(tiny, hw, _one_gpu(), Workload(mode="prefill", tpot_ms=5.0), fixed=ONE)
    same, _ = search_workload(tiny, hw, _one_gpu(), Workload(mode="decode", seq_len=100, output_len=28), fixed=ONE,
                              latency_target_ms=5.0)
    ref, _ = search_workload(tiny, hw, _one_gpu(), w.model_copy(update={"output_len": 28}), fixed=ONE)
    assert same.best.sequences == ref.best.sequences  # the older name sets the same target


def test_prefill_ttft_target_is_the_step(tiny, hw):
    # prefill: one 100-token prompt on the one GPU; the step is the time to first token
    pf = serve_step(tiny, hw, mode="prefill", num_gpus=1, gpus_per_node=1, tp=1, pp=1, ep=1, sequences=1,
                    seq_len=100).step_ms
    found, w = search_workload(tiny, hw, _one_gpu(), Workload(mode="prefill", prompt_len=100, ttft_ms=pf * 1.01),
                               fixed=ONE)
    assert found.best.latency_ms == pytest.approx(pf) and w.batch == 1 and w.output_len is None
    with pytest.raises(InfeasibleError, match="time-to-first-token latency target") as e:
        search_workload(tiny, hw, _one_gpu(), Workload(mode="prefill", prompt_len=100, ttft_ms=pf * 0.99), fixed=ONE)
    assert "--ttft-ms" in e.value.for_flags()
