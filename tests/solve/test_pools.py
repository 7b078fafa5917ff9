"""Prefill/decode pools and the colocated comparison (planner.solve.pools): the queueing and KV
rules by hand, each pool's goodput consistent with its targets under the model, splits that sum
to the cluster, and comparisons that move the right way."""

import math

import pytest

from planner.errors import InputError
from planner.resolve import resolve_hardware, resolve_model
from planner.solve import pools as P
from planner.specs.cluster import ClusterSpec

HW = resolve_hardware("h100-sxm")
OLMOE = resolve_model("olmoe-1b-7b")


def node(gpus: int = 8, nodes: int = 1) -> ClusterSpec:
    return ClusterSpec(hardware=HW.name, num_nodes=nodes, gpus_per_node=gpus)


def targets(**kw) -> P.ServeTargets:
    # uniform routing unless a test asks for the derived imbalance (it needs a routing trace)
    base = dict(prompt_len=1024, output_len=256, ttft_ms=500.0, tpot_ms=30.0, routing="uniform")
    base.update(kw)
    return P.ServeTargets(**base)


def test_queue_rules_by_hand():
    # M/D/1: time in system / service = 1 + rho / (2 (1 - rho)); at rho 0.8 that is 3
    assert P.queue_factor(0.8) == pytest.approx(3.0)
    assert P.queue_factor(0.0) == 1.0 and math.isinf(P.queue_factor(1.0))
    # a 300 ms budget over a 100 ms step: s = 2, rho* = 2s / (1 + 2s) = 0.8, and it meets the budget exactly
    assert P.max_utilization(100.0, 300.0) == pytest.approx(0.8)
    assert 100.0 * P.queue_factor(P.max_utilization(100.0, 300.0)) == pytest.approx(300.0)
    assert P.max_utilization(100.0, 50.0) == 0.0  # one step alone misses the target
    assert P.max_utilization(100.0, None) == P.MAX_UTILIZATION
    assert P.max_utilization(1.0, 1e9) == P.MAX_UTILIZATION  # capped


def test_kv_copy_by_hand():
    # OLMoE: 16 layers x 2 (K, V) x 16 KV heads x 128 head dim x 2 bytes = 131,072 bytes per token
    c = P.kv_copy(OLMOE, HW, 1000, "bf16")
    assert c.bytes_per_token == 16 * 2 * 16 * 128 * 2
    assert c.bytes_per_request == 1000 * c.bytes_per_token
    assert c.link == "nic" and c.bandwidth_gbps == HW.nic.bandwidth_gbps
    assert c.ms_per_request == pytest.approx(HW.nic.latency_us * 1e-3 + c.bytes_per_request / (HW.nic.bandwidth_gbps * 1e6))
    assert c.max_rps(4) == pytest.approx(4 * HW.nic.bandwidth_gbps * 1e9 / c.bytes_per_request)
    assert P.kv_copy(OLMOE, HW, 1000, "fp8").bytes_per_request == c.bytes_per_request / 2
    same = P.kv_copy(OLMOE, HW, 1000, "bf16", same_node=True)
    assert same.link == "nvlink" and same.ms_per_request < c.ms_per_request
    # DeepSeek-V3's MLA latent: 61 layers x (512 + 64) x 2 bytes, not split by heads
    ds = resolve_model("deepseek-v3")
    assert P.kv_copy(ds, HW, 2000, "bf16").bytes_per_token == 61 * (512 + 64) * 2


def test_prefill_pool_goodput_follows_the_ttft_model():
    t = targets()
    copy = P.kv_copy(OLMOE, HW, t.prompt_len, "bf16", same_node=True)
    f = P.prefill_pool(OLMOE, HW, node(2), t, copy)
    c = f.candidate
    assert c is not None and f.reason == ""
    assert f.capacity_rps == pytest.approx(c.tokens_per_s / t.prompt_len)
    assert f.goodput_rps == pytest.approx(f.utilization * f.capacity_rps)
    k = f.detail["prompts_per_gpu"]
    assert f.detail["kv_copy_ms"] == pytest.approx(copy.ms_per_request * (k + 1) / 2)
    assert f.ttft_ms == pytest.approx(c.step_ms * P.queue_factor(f.utilization) + f.detail["kv_copy_ms"])
    assert f.ttft_ms <= t.ttft_ms + 1e-6
    # a tighter TTFT target never raises the goodput
    tight = P.prefill_pool(OLMOE, HW, node(2), targets(ttft_ms=f.ttft_ms / 2), copy)
    assert tight.goodput_rps <= f.goodput_rps + 1e-9
    assert tight.ttft_ms is None or tight.ttft_ms <= f.ttft_ms / 2 + 1e-6


def test_prefill_pool_names_why_nothing_fits():
    t = targets(ttft_ms=0.001)
    copy = P.kv_copy(OLMOE, HW, t.prompt_len, "bf16")
    f = P.prefill_pool(OLMOE, HW, node(2), t, copy)
    assert f.goodput_rps == 0 and "KV copy alone" in f.reason


def test_decode_pool_goodput_is_batch_over_output_time():
    t = targets()
    f = P.decode_pool(OLMOE, HW, node(4), t)
    c = f.candidate
    assert c is not None
    assert f.tpot_ms == c.step_ms <= t.tpot_ms
    assert f.goodput_rps == pytest.approx(c.sequences / (t.output_len * c.step_ms * 1e-3))
    loose = P.decode_pool(OLMOE, HW, node(4), targets(tpot_ms=None))
    assert loose.goodput_rps >= f.goodput_rps


def test_colocated_figures_are_the_mixed_step_model():
    t = targets()
    f = P.colocated(OLMOE, HW, node(8), t)
    c, d = f.candidate, f.detail
    assert c is not None and f.reason == ""
    C = d["chunk_tokens_per_gpu"] * c.tp
    r = c.sequences // c.dp
    assert d["chunk_share"] == pytest.approx(r * t.prompt_len / (t.output_len * C))
    assert d["mixed_step_ms"] == pytest.approx(max(d["decode_step_ms"], d["chunk_step_ms"],
                                                   d["decode_step_ms"] + d["chunk_step_ms"] - d["fixed_step_ms"]))
    tpot = d["decode_step_ms"] + d["chunk_share"] * (d["mixed_step_ms"] - d["decode_step_ms"])
    assert f.tpot_ms == pytest.approx(tpot) and f.tpot_ms <= t.tpot_ms
    ttft = math.ceil(t.prompt_len / C) * d["mixed_step_ms"] * P.queue_factor(d["chunk_share"])
    assert f.ttft_ms == pytest.approx(ttft) and f.ttft_ms <= t.ttft_ms
    assert f.goodput_rps == pytest.approx(c.sequences / (t.output_len * f.tpot_ms * 1e-3))
    # interference: goodput below what the same batch decodes without prefill chunks
    assert f.goodput_rps < f.capacity_rps
    # a tighter TPOT target never raises the goodput
    assert P.colocated(OLMOE, HW, node(8), targets(tpot_ms=f.tpot_ms * 0.9)).goodput_rps <= f.goodput_rps


def test_splits_sum_to_the_cluster_and_the_best_is_kept():
    t = targets()
    table = P.PoolTable(OLMOE, HW, node(8), t, P.kv_copy(OLMOE, HW, t.prompt_len, "bf16", same_node=True))
    best, splits = P.best_split(table)
    assert [(s.prefill_units, s.decode_units) for s in splits] == [(p, 8 - p) for p in range(1, 8)]
    assert best.goodput_rps == max(s.goodput_rps for s in splits) > 0
    for s in splits:
        p, d = table.get("prefill", s.prefill_units), table.get("decode", s.decode_units)
        assert p.gpus + d.gpus == 8
        assert s.goodput_rps == pytest.approx(min(p.goodput_rps, d.goodput_rps, table.copy.max_rps(min(p.gpus, d.gpus))))
    fixed, only = P.best_split(table, prefill_units=3)
    assert (fixed.prefill_units, fixed.decode_units) == (3, 5) and len(only) == 1
    with pytest.raises(InputError) as e:
        P.best_split(table, prefill_units=5, decode_units=4)
    assert e.value.field == "prefill_nodes"
    with pytest.raises(InputError) as e:
        P.best_split(table, decode_units=8)
    assert e.value.field == "prefill_nodes"


def test_units_for_rate_takes_the_fewest_gpus():
    t = targets()
    table = P.PoolTable(OLMOE, HW, node(8), t, P.kv_copy(OLMOE, HW, t.prompt_len, "bf16", same_node=True))
    rate = 1000.0
    u, copies, gpus = P.units_for_rate(table, "decode", rate, [1, 2, 4, 8])
    assert gpus == copies * u and copies * table.get("decode", u).goodput_rps >= rate
    for v in (1, 2, 4, 8):
        g = min(table.get("decode", v).goodput_rps, table.copy.max_rps(v))
        if g > 0:
            assert math.ceil(rate / g - 1e-9) * v >= gpus


def test_multi_node_pools_are_whole_nodes():
    cl = node(8, 3)
    assert P.units_of(cl) == 3 and P.pool_cluster(2, cl).num_gpus == 16
    assert P.units_of(node(8)) == 8 and P.pool_cluster(3, node(8)).num_gpus == 3


@pytest.mark.parametrize("field, value", [("prompt_len", 0), ("output_len", -1), ("prefill_tokens", 0),
                                          ("ttft_ms", 0.0), ("tpot_ms", float("nan")), ("request_rate", -1.0)])
def test_bad_targets_name_their_field(field, value):
    with pytest.raises(InputError) as e:
        targets(**{field: value}).check()
    assert e.value.field == field


def test_decode_heavy_small_model_favours_colocated():
    # 64-token prompts, 2048-token outputs: prefill is a sliver of the work, so a separate prefill
    # pool idles GPUs that colocated serving decodes on, and the chunks barely stall decode
    t = targets(prompt_len=64, output_len=2048, tpot_ms=40.0, ttft_ms=1000.0)
    table = P.PoolTable(OLMOE, HW, node(8), t, P.kv_copy(OLMOE, HW, 64, "bf16", same_node=True))
    best, _ = P.best_split(table)
    col = table.get("colocated", 8)
    assert col.detail["chunk_share"] < 0.05 and col.goodput_rps == pytest.approx(col.capacity_rps, rel=0.02)
    assert col.goodput_rps > best.goodput_rps


def test_deepseek_v3_long_prompts_favour_disaggregation():
    # SGLang's workload shape (2,000-token prompts, 100-token outputs) under TTFT 2 s / TPOT 50 ms on
    # 8 H100 nodes: every prefill chunk stalls a whole 64-GPU decode batch, so the colocated engine
    # must keep chunks small and serves fewer requests than 6 prefill + 2 decode nodes
    ds = resolve_model("deepseek-v3")
    t = P.ServeTargets(prompt_len=2000, output_len=100, ttft_ms=2000.0, tpot_ms=50.0, redundant=32, routing="uniform")
    table = P.PoolTable(ds, HW, node(8, 8), t, P.kv_copy(ds, HW, 2000, "bf16"))
    split, _ = P.best_split(table, prefill_units=6, decode_units=2)
    col = table.get("colocated", 8)
    assert col.reason == "" and split.goodput_rps > 1.2 * col.goodput_rps
    assert col.detail["chunk_tokens_per_gpu"] < P.CHUNK_CHOICES[-1]  # the TPOT target forces small chunks


def test_pools_take_two_batch_overlap_where_it_is_faster():
    # SGLang's EP32 prefill pool (4 nodes, 1,000-token prompts): dispatch and combine cross the NICs,
    # so the overlapped step is the faster and auto keeps it; off forces the plain step
    ds = resolve_model("deepseek-v3")
    copy = P.kv_copy(ds, HW, 1000, "bf16")
    fixed = dict(ep=32, tp=1, pp=1)
    got = {m: P.prefill_pool(ds, HW, node(8, 4), P.ServeTargets(prompt_len=1000, output_len=100, redundant=32,
                                                                  two_batch_overlap=m, routing="uniform"),
                             copy, fixed=fixed)
           for m in ("auto", "on", "off")}
    assert got["auto"].detail["two_batch_overlap"] == got["on"].detail["two_batch_overlap"] == 1.0
    assert got["off"].detail["two_batch_overlap"] == 0.0
    assert got["auto"].step_ms == got["on"].step_ms < got["off"].step_ms
    assert got["auto"].capacity_rps > got["off"].capacity_rps
    # a small model on one node moves nothing between nodes: auto keeps whichever step is faster
    t = targets()
    for m in ("on", "off"):
        assert P.decode_pool(OLMOE, HW, node(4), targets(two_batch_overlap=m)).goodput_rps <= \
            P.decode_pool(OLMOE, HW, node(4), t).goodput_rps * (1 + 1e-9)
    with pytest.raises(InputError) as e:
        targets(two_batch_overlap="maybe").check()
    assert e.value.field == "two_batch_overlap"


def test_launch_line_asks_for_two_batch_overlap_when_the_pool_assumes_it():
    from types import SimpleNamespace

    from planner.serve_plan import disaggregation_flags
    from planner.specs.search import LaunchArgs

    pool = SimpleNamespace(launch=LaunchArgs(sglang=["--moe-a2a-backend", "deepep"], vllm=[]),
                           parallel=SimpleNamespace(tp=1), workload=SimpleNamespace(batch=64))
    on = disaggregation_flags("prefill", pool, 16384, True).sglang
    off = disaggregation_flags("prefill", pool, 16384, False).sglang
    assert on.count("--enable-two-batch-overlap") == 1 and "--enable-two-batch-overlap" not in off
    assert on[on.index("--deepep-mode") + 1] == "normal"
    dec = disaggregation_flags("decode", pool, 16384, True).sglang
    assert "--enable-two-batch-overlap" in dec and dec[dec.index("--deepep-mode") + 1] == "low_latency"


def test_pools_price_the_busiest_gpu_under_eplb():
    # a routing trace that sends 3 of 4 choices to experts 0-7: EPLB's 8 spare slots cannot spread that
    # over 4 GPUs at 16 tokens per GPU, so the decode pool's step runs slower than at the mean load
    import numpy as np

    from planner.solve.serve_imbalance import imbalance_at
    from planner.traces import Trace

    rng = np.random.default_rng(0)
    L, T = OLMOE.num_moe_layers, 2048
    hot = rng.random((L, T, OLMOE.top_k)) < 0.75
    ids = np.where(hot, rng.integers(0, 8, (L, T, OLMOE.top_k)), rng.integers(8, 64, (L, T, OLMOE.top_k)))
    ids = np.sort(ids, axis=2)
    ids = np.array([[np.r_[np.unique(r), np.setdiff1d(np.arange(64), r)[:OLMOE.top_k - np.unique(r).size]]
                     for r in layer] for layer in ids])
    tr = Trace(ids, 64, seq_id=np.arange(T) // 64, pos=np.arange(T) % 64)
    fixed, batch = dict(ep=4, tp=1, pp=1), 4 * 16
    even = P.decode_pool(OLMOE, HW, node(4), targets(redundant=8, tpot_ms=None), fixed=fixed, batch=batch)
    skew = P.decode_pool(OLMOE, HW, node(4), targets(redundant=8, tpot_ms=None, routing="eplb", trace=tr),
                         fixed=fixed, batch=batch)
    fe, fa = imbalance_at(OLMOE, 4, 8, 16, "decode", 8, tr)
    assert (even.detail["imbalance_experts"], even.detail["imbalance_alltoall"]) == (1.0, 1.0)
    assert skew.detail["imbalance_experts"] == pytest.approx(fe) and fe > 1.0
    assert skew.detail["imbalance_alltoall"] == pytest.approx(fa)
    assert skew.step_ms > even.step_ms
    with pytest.raises(InputError) as e:
        targets(routing="skewed").check()
    assert e.value.field == "routing"
