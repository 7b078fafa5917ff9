"""Trace / CountsTrace: validation one-liners, selections, splits, counts and source ranks."""

import numpy as np
import pytest

from planner.errors import InputError
from planner.traces import CountsTrace, Trace, check_against_model
from tests.conftest import make_model


def small_ids() -> np.ndarray:
    """[L=2, T=6, k=2] over 4 experts."""
    return np.array(
        [
            [[0, 1], [1, 2], [0, 3], [2, 3], [0, 1], [3, 2]],
            [[1, 0], [2, 3], [3, 0], [1, 2], [0, 2], [1, 3]],
        ]
    )


def make(**kw) -> Trace:
    args = dict(topk_ids=small_ids(), num_experts=4, source="t.npz")
    args.update(kw)
    return Trace(**args)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# ---- validation ----------------------------------------------------------------------------


def test_wrong_ndim():
    with pytest.raises(InputError) as e:
        make(topk_ids=np.zeros((3, 100), dtype=np.int64))
    assert one_line_error(e) == "t.npz: topk_ids must have shape [layers, tokens, top_k], got (3, 100)"


def test_out_of_range_id_names_layer():
    ids = small_ids()
    ids[1, 2, 0] = 70
    with pytest.raises(InputError) as e:
        make(topk_ids=ids)
    assert one_line_error(e) == "t.npz: topk_ids values must be in [-1, 4) (-1 = no expert; found 70 at layer 1)"


def test_negative_id():
    ids = small_ids()
    ids[0, 0, 0] = -2  # -1 is a null expert (tests/traces/test_null_experts.py)
    with pytest.raises(InputError, match=r"topk_ids values must be in \[-1, 4\) \(-1 = no expert; found -2 at layer 0\)"):
        make(topk_ids=ids)


def test_duplicate_expert_in_one_token():
    ids = small_ids()
    ids[1, 4] = [2, 2]
    with pytest.raises(InputError) as e:
        make(topk_ids=ids)
    msg = one_line_error(e)
    assert msg.startswith("t.npz: topk_ids must not repeat an expert")
    assert "expert 2 twice for token 4 at layer 1" in msg


def test_float_ids_rejected():
    with pytest.raises(InputError, match=r"t.npz: topk_ids must hold integers, got dtype float64"):
        make(topk_ids=small_ids().astype(np.float64))


def test_top_k_larger_than_experts():
    with pytest.raises(InputError, match=r"top_k \(2\) must be <= num_experts \(1\)"):
        make(topk_ids=np.zeros((1, 3, 2), dtype=np.int64), num_experts=1)


def test_weights_shape_dtype_sign_finite():
    w = np.full(small_ids().shape, 0.5)
    make(topk_weights=w)  # fine
    with pytest.raises(InputError, match=r"topk_weights must have the shape of topk_ids \(2, 6, 2\), got \(2, 6\)"):
        make(topk_weights=w[..., 0])
    with pytest.raises(InputError, match=r"topk_weights must hold floats, got dtype int64"):
        make(topk_weights=np.ones(small_ids().shape, dtype=np.int64))
    neg = w.copy()
    neg[1, 3, 1] = -0.25
    with pytest.raises(InputError) as e:
        make(topk_weights=neg)
    assert one_line_error(e) == "t.npz: topk_weights must be >= 0 (found -0.25 at layer 1)"
    nan = w.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"topk_weights must be finite \(found NaN or inf at layer 0\)"):
        make(topk_weights=nan)


def test_decreasing_steps():
    with pytest.raises(InputError) as e:
        make(step=np.array([0, 0, 1, 0, 2, 2]))
    assert one_line_error(e) == "t.npz: step must be non-decreasing (token 3 has step 0 after step 1)"


def test_step_shape_and_dtype():
    with pytest.raises(InputError, match=r"step must have shape \[tokens\] = \(6,\), got \(5,\)"):
        make(step=np.zeros(5, dtype=np.int64))
    with pytest.raises(InputError, match=r"step must hold integers, got dtype float64"):
        make(step=np.zeros(6))


def test_source_rank_checks():
    with pytest.raises(InputError, match=r"source_rank must be >= 0 \(found -2 at token 1\)"):
        make(source_rank=np.array([0, -2, 0, 0, 0, 0]))
    with pytest.raises(InputError, match=r"source_rank must have shape"):
        make(source_rank=np.zeros(2, dtype=np.int64))


def test_empty_trace_rejected():
    with pytest.raises(InputError, match="at least one layer, token and choice"):
        make(topk_ids=np.zeros((2, 0, 2), dtype=np.int64))


# ---- shape, steps, selections ---------------------------------------------------------------


def test_properties_and_default_steps():
    t = make(tokens_per_step=4)
    assert (t.num_layers, t.num_tokens, t.top_k, t.num_experts) == (2, 6, 2, 4)
    assert t.has_tokens
    assert t.step.tolist() == [0, 0, 0, 0, 1, 1]
    assert t.num_steps == 2 and t.steps.tolist() == [0, 1]
    assert t.topk_ids.dtype == np.int32
    one = make()
    assert one.num_steps == 1


def test_select_steps_and_split():
    t = make(step=np.array([3, 3, 5, 5, 8, 9]))
    assert t.num_steps == 4 and t.steps.tolist() == [3, 5, 8, 9]
    sel = t.select_steps(np.array([False, True, False, True]))
    assert sel.step.tolist() == [5, 5, 9]
    assert np.array_equal(sel.topk_ids, t.topk_ids[:, [2, 3, 5]])
    assert t.select_steps(slice(1, 3)).step.tolist() == [5, 5, 8]
    assert t.select_steps([0]).step.tolist() == [3, 3]
    first, later = t.split(0.5)
    assert first.steps.tolist() == [3, 5] and later.steps.tolist() == [8, 9]
    first, later = t.split(0.9)  # rounds to 4 but keeps one held-out step
    assert first.num_steps == 3 and later.num_steps == 1
    first, later = t.split(0.01)
    assert first.num_steps == 1 and later.num_steps == 3


def test_split_needs_two_steps():
    with pytest.raises(InputError, match="cannot split a trace of 1 step"):
        make().split(0.5)
    with pytest.raises(InputError, match=r"train_fraction must be in \(0, 1\), got 1.5"):
        make(tokens_per_step=2).split(1.5)


def test_select_keeps_weights_and_ranks():
    w = np.random.default_rng(0).random(small_ids().shape)
    t = make(topk_weights=w, source_rank=np.array([0, 1, 0, 1, 0, 1]), tokens_per_step=2)
    s = t.select_steps([2])
    assert np.array_equal(s.topk_weights, w[:, 4:6])
    assert s.source_rank.tolist() == [0, 1]


# ---- counts and ranks -----------------------------------------------------------------------


def test_counts_by_hand():
    t = make(tokens_per_step=3)
    c = t.counts()
    assert c.dtype == np.int64
    assert c.tolist() == [[3, 3, 3, 3], [3, 3, 3, 3]]
    cs = t.counts_per_step()
    assert cs.shape == (2, 2, 4)
    # layer 0, tokens 0..2: {0,1},{1,2},{0,3}
    assert cs[0, 0].tolist() == [2, 2, 1, 1]
    assert cs[1, 0].tolist() == [1, 1, 2, 2]
    assert np.array_equal(cs.sum(axis=0), c)


def test_source_ranks_default_blocks():
    ids = np.zeros((1, 10, 1), dtype=np.int64)
    t = Trace(ids, 2, step=np.array([0] * 7 + [1] * 3))
    # step 0: 7 tokens over 3 ranks -> blocks of 3, 2, 2 (in order); step 1: 3 tokens -> 1 each
    assert t.source_ranks(3).tolist() == [0, 0, 0, 1, 1, 2, 2, 0, 1, 2]
    assert t.source_ranks(1).tolist() == [0] * 10


def test_source_ranks_given_are_checked():
    t = make(source_rank=np.array([0, 1, 2, 3, 4, 5]))
    assert t.source_ranks(8).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(InputError) as e:
        t.source_ranks(4)
    assert one_line_error(e) == (
        "t.npz: source_rank values must be < the number of data-parallel ranks 4 (found 5)"
    )


# ---- counts-only traces ---------------------------------------------------------------------


def test_counts_trace():
    c = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    t = CountsTrace(c, model="m", source="c.npz")
    assert not t.has_tokens
    assert (t.num_steps, t.num_layers, t.num_experts) == (2, 3, 4)
    assert np.array_equal(t.counts(), c.sum(axis=0))
    assert np.array_equal(t.counts_per_step(), c)
    a, b = t.split(0.5)
    assert np.array_equal(a.counts(), c[0]) and np.array_equal(b.counts(), c[1])


def test_counts_trace_validation():
    with pytest.raises(InputError, match=r"c.npz: counts must have shape \[steps, layers, experts\], got \(3, 4\)"):
        CountsTrace(np.zeros((3, 4), dtype=np.int64), source="c.npz")
    with pytest.raises(InputError, match=r"counts must be >= 0 \(found -1 at layer 1\)"):
        CountsTrace(np.array([[[0, 1], [-1, 2]]]), source="c.npz")
    with pytest.raises(InputError, match="counts must hold integers"):
        CountsTrace(np.zeros((1, 2, 3)), source="c.npz")
    with pytest.raises(InputError, match="counts has 3 experts per layer but num_experts is 4"):
        CountsTrace(np.zeros((1, 2, 3), dtype=np.int64), 4, source="c.npz")


# ---- model check ----------------------------------------------------------------------------


def test_check_against_model():
    model = make_model(num_layers=2, num_experts=4, top_k=2)
    check_against_model(make(), model)
    with pytest.raises(InputError) as e:
        check_against_model(make(), make_model(num_layers=3, num_experts=4, top_k=2), "x.npz")
    assert one_line_error(e) == "x.npz: trace has 2 MoE layers but model tiny-moe has 3"
    with pytest.raises(InputError, match="trace has 4 experts per layer but model tiny-moe has 8"):
        check_against_model(make(), make_model(num_layers=2, num_experts=8, top_k=2))
    with pytest.raises(InputError, match="trace has top_k 2 but model tiny-moe has top_k 1"):
        check_against_model(make(), make_model(num_layers=2, num_experts=4, top_k=1))
    counts = CountsTrace(np.zeros((1, 2, 4), dtype=np.int64))
    check_against_model(counts, make_model(num_layers=2, num_experts=4, top_k=1))  # no top_k to check
