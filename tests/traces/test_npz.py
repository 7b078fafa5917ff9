"""The .npz format: round trips, compact dtypes, one-line errors, shipped traces."""

import io
import logging
import zipfile

import numpy as np
import pytest

from planner.errors import InputError
from planner.traces import (
    CountsTrace,
    Trace,
    default_trace_path,
    load_trace,
    save_trace,
    synth_trace,
)
from tests.conftest import make_model


def tiny_trace(**kw) -> Trace:
    return synth_trace(num_layers=3, num_experts=16, top_k=2, num_tokens=64, tokens_per_step=16, num_ranks=4, seed=1, **kw)


def write_npz(path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_round_trip_tokens(tmp_path):
    t = tiny_trace(model_name="tiny")
    p = tmp_path / "t.npz"
    save_trace(t, p)
    back = load_trace(p)
    assert isinstance(back, Trace)
    assert np.array_equal(back.topk_ids, t.topk_ids)
    assert np.array_equal(back.topk_weights, t.topk_weights)
    assert back.topk_weights.dtype == t.topk_weights.dtype
    assert np.array_equal(back.step, t.step)
    assert np.array_equal(back.source_rank, t.source_rank)
    assert back.num_experts == 16 and back.model == "tiny"
    assert back.source == "t.npz"


def test_round_trip_without_optional_arrays(tmp_path):
    ids = np.array([[[0, 1], [2, 3]]])
    t = Trace(ids, 300)  # 300 experts: ids need uint16
    p = tmp_path / "t.npz"
    save_trace(t, p)
    with np.load(p) as z:
        assert set(z.files) == {"topk_ids", "step", "num_experts"}
        assert z["topk_ids"].dtype == np.uint16
    back = load_trace(p)
    assert back.topk_weights is None and back.source_rank is None and back.model is None
    assert np.array_equal(back.topk_ids, ids) and back.num_experts == 300


def test_compact_id_dtype(tmp_path):
    p = tmp_path / "t.npz"
    save_trace(tiny_trace(), p)
    with np.load(p) as z:
        assert z["topk_ids"].dtype == np.uint8
        assert z["step"].dtype == np.uint8
        assert z["source_rank"].dtype == np.uint8
        assert int(z["num_experts"]) == 16


def test_round_trip_counts(tmp_path):
    c = np.random.default_rng(0).integers(0, 1000, size=(3, 4, 5))
    t = CountsTrace(c, model="m")
    p = tmp_path / "c.npz"
    save_trace(t, p)
    with np.load(p) as z:
        assert set(z.files) == {"counts", "num_experts", "model"}
        assert z["counts"].dtype == np.uint16
    back = load_trace(p)
    assert isinstance(back, CountsTrace) and not back.has_tokens
    assert np.array_equal(back.counts_per_step(), c) and back.model == "m"


def test_save_is_atomic_and_needs_npz(tmp_path):
    p = tmp_path / "t.npz"
    save_trace(tiny_trace(), p)
    assert [f.name for f in tmp_path.iterdir()] == ["t.npz"]  # no temporary left behind
    with pytest.raises(InputError, match=r"t.txt: traces are written as .npz"):
        save_trace(tiny_trace(), tmp_path / "t.txt")


def test_tokens_per_step_for_files_without_step(tmp_path):
    p = tmp_path / "t.npz"
    write_npz(p, topk_ids=np.zeros((1, 10, 1), dtype=np.uint8), num_experts=np.array(4))
    assert load_trace(p).num_steps == 1
    assert load_trace(p, tokens_per_step=4).step.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_num_experts_missing_is_inferred_with_warning(tmp_path, caplog):
    p = tmp_path / "t.npz"
    write_npz(p, topk_ids=np.array([[[0, 5]]]))
    with caplog.at_level(logging.WARNING):
        t = load_trace(p)
    assert t.num_experts == 6
    assert "no num_experts" in caplog.text
    model = make_model(num_layers=1, num_experts=8, top_k=2)
    assert load_trace(p, model=model).num_experts == 8  # the model fills it
    assert load_trace(p, model=model).model == "tiny-moe"


def test_load_checks_against_model(tmp_path):
    p = tmp_path / "t.npz"
    save_trace(tiny_trace(), p)
    with pytest.raises(InputError, match="t.npz: trace has 3 MoE layers but model tiny-moe has 2"):
        load_trace(p, model=make_model(num_layers=2, num_experts=16, top_k=2))


# ---- one-line errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"topk_ids": np.zeros((3, 100), dtype=np.int64), "num_experts": np.array(64)},
         "bad.npz: topk_ids must have shape [layers, tokens, top_k], got (3, 100)"),
        ({"topk_ids": np.full((3, 4, 1), 70), "num_experts": np.array(64)},
         "bad.npz: topk_ids values must be in [-1, 64) (-1 = no expert; found 70 at layer 0)"),
        ({"topk_ids": np.zeros((1, 2, 2), dtype=np.int64), "num_experts": np.array(4)},
         "bad.npz: topk_ids must not repeat an expert in one token's top-k (expert 0 twice for token 0 at layer 0)"),
        ({"topk_ids": np.zeros((1, 2, 1)), "num_experts": np.array(4)},
         "bad.npz: topk_ids must hold integers, got dtype float64"),
        ({"topk_ids": np.zeros((1, 2, 1), dtype=np.int64), "topk_weights": -np.ones((1, 2, 1)), "num_experts": np.array(4)},
         "bad.npz: topk_weights must be >= 0 (found -1 at layer 0)"),
        ({"topk_ids": np.zeros((1, 3, 1), dtype=np.int64), "step": np.array([1, 0, 0]), "num_experts": np.array(4)},
         "bad.npz: step must be non-decreasing (token 1 has step 0 after step 1)"),
        ({"topk_ids": np.zeros((1, 2, 1), dtype=np.int64), "num_experts": np.array(4), "gate": np.zeros(2)},
         "bad.npz: unknown keys gate (allowed: topk_ids, topk_weights, step, source_rank, seq_id, pos, num_experts, model)"),
        ({"step": np.zeros(2, dtype=np.int64)},
         "bad.npz: missing topk_ids (a per-token trace) or counts (a counts-only trace); found step"),
        ({"topk_ids": np.zeros((1, 2, 1), dtype=np.int64), "counts": np.zeros((1, 1, 2), dtype=np.int64)},
         "bad.npz: holds both topk_ids and counts; a trace is one or the other"),
        ({"counts": np.zeros((1, 1, 2), dtype=np.int64), "step": np.zeros(1, dtype=np.int64)},
         "bad.npz: unknown keys step (allowed: counts, num_experts, model)"),
        ({"topk_ids": np.zeros((1, 2, 1), dtype=np.int64), "num_experts": np.array([4, 4])},
         "bad.npz: num_experts must be a scalar, got an array of shape (2,)"),
        ({"topk_ids": np.zeros((1, 2, 1), dtype=np.int64), "num_experts": np.array(4.0)},
         "bad.npz: num_experts must be an integer, got dtype float64"),
        ({"topk_ids": np.zeros((1, 2, 1), dtype=np.int64), "num_experts": np.array(4), "model": np.array(3)},
         "bad.npz: model must be a string, got dtype int64"),
    ],
)
def test_npz_errors_are_one_line(tmp_path, arrays, message):
    p = tmp_path / "bad.npz"
    write_npz(p, **arrays)
    with pytest.raises(InputError) as e:
        load_trace(p)
    assert str(e.value) == message


def test_corrupt_file(tmp_path):
    p = tmp_path / "broken.npz"
    p.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(InputError) as e:
        load_trace(p)
    msg = str(e.value)
    assert msg.startswith("broken.npz: not a readable .npz file (") and "\n" not in msg


def test_truncated_archive(tmp_path):
    p = tmp_path / "cut.npz"
    save_trace(tiny_trace(), p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(InputError, match=r"^cut.npz: not a readable .npz file"):
        load_trace(p)


def test_corrupt_member(tmp_path):
    p = tmp_path / "member.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("topk_ids.npy", b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=r"^member.npz: not a readable .npz file"):
        load_trace(p)


def test_npy_instead_of_npz(tmp_path):
    p = tmp_path / "arr.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(InputError, match=r"arr.npz: holds a single .npy array, not an .npz archive"):
        load_trace(p)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_trace(tmp_path / "nope.npz")
    with pytest.raises(InputError, match=r"t.csv: unknown trace format '.csv'"):
        load_trace(tmp_path / "t.csv")


# ---- shipped traces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, layers, experts, top_k",
    [("qwen3-30b-a3b", 48, 128, 8), ("mixtral-8x7b", 32, 8, 2), ("deepseek-v2-lite", 26, 64, 6)],
)
def test_shipped_traces(name, layers, experts, top_k):
    p = default_trace_path(name)
    assert p is not None and p.name == f"{name}.npz"
    assert p.stat().st_size <= 3_000_000
    t = load_trace(p)
    assert (t.num_layers, t.num_experts, t.top_k) == (layers, experts, top_k)
    assert t.model == name
    assert t.num_steps == 16 and t.num_tokens == 16 * 512
    assert t.source_ranks(8).max() == 7


def test_default_trace_path_unknown_and_case():
    assert default_trace_path("no-such-model") is None
    assert default_trace_path("../models/qwen3-30b-a3b") is None
    assert default_trace_path("Qwen3-30B-A3B") == default_trace_path("qwen3-30b-a3b")


def test_shipped_default_matches_its_preset():
    from planner.specs.model_io import load_model
    from planner.traces import check_against_model

    for name in ("qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v2-lite"):
        check_against_model(load_trace(default_trace_path(name)), load_model(name))
