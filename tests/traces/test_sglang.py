"""SGLang logical_count (.json / .pt) as counts-only traces; dense-layer rows."""

import json
import logging

import numpy as np
import pytest

from planner.errors import InputError
from planner.traces import CountsTrace, load_trace
from tests.conftest import make_model


def write(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_two_d_is_one_step(tmp_path):
    counts = [[5, 0, 3], [1, 1, 6]]
    t = load_trace(write(tmp_path / "loc.json", {"logical_count": counts}))
    assert isinstance(t, CountsTrace) and not t.has_tokens
    assert t.counts_per_step().tolist() == [counts]
    assert (t.num_steps, t.num_layers, t.num_experts) == (1, 2, 3)
    assert t.source == "loc.json"


def test_three_d_recorder_dump(tmp_path):
    c = np.arange(4 * 2 * 3).reshape(4, 2, 3)
    t = load_trace(write(tmp_path / "dump.json", {"logical_count": c.tolist(), "rank": 0}))
    assert t.num_steps == 4
    assert np.array_equal(t.counts(), c.sum(axis=0))
    first, later = t.split(0.5)
    assert first.num_steps == 2 and later.num_steps == 2


def test_integral_floats_accepted(tmp_path):
    t = load_trace(write(tmp_path / "f.json", {"logical_count": [[1.0, 2.0]]}))
    assert t.counts().tolist() == [[1, 2]]


def test_dense_layers_dropped_with_model(tmp_path):
    # 4 hidden layers, the first dense: SGLang counts all 4 rows, the trace keeps the 3 MoE rows
    model = make_model(num_layers=4, first_k_dense=1, dense_intermediate_size=64, num_experts=3, top_k=1)
    rows = [[0, 0, 0], [1, 2, 3], [4, 5, 6], [7, 8, 9]]
    t = load_trace(write(tmp_path / "loc.json", {"logical_count": rows}), model=model)
    assert t.counts().tolist() == rows[1:]
    assert t.model == "tiny-moe"
    # a count of MoE rows only is taken as is
    t2 = load_trace(write(tmp_path / "moe.json", {"logical_count": rows[1:]}), model=model)
    assert t2.counts().tolist() == rows[1:]
    with pytest.raises(InputError) as e:
        load_trace(write(tmp_path / "bad.json", {"logical_count": rows[:2]}), model=model)
    assert str(e.value) == "bad.json: logical_count has 2 layers but model tiny-moe has 4 layers (3 MoE layers)"


def test_dense_layers_dropped_without_model(tmp_path, caplog):
    rows = [[0, 0], [3, 1], [0, 0], [2, 2]]
    with caplog.at_level(logging.WARNING):
        t = load_trace(write(tmp_path / "loc.json", {"logical_count": [rows, rows]}))
    assert t.num_layers == 2 and t.counts().tolist() == [[6, 2], [4, 4]]
    assert "dropped 2 all-zero layer rows of 4 as dense layers" in caplog.text


def test_expert_count_checked_against_model(tmp_path):
    model = make_model(num_layers=1, num_experts=8, top_k=2)
    with pytest.raises(InputError, match="logical_count has 3 experts per layer but model tiny-moe has 8"):
        load_trace(write(tmp_path / "loc.json", {"logical_count": [[1, 2, 3]]}), model=model)


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1, 2], "x.json: expected a mapping with the key 'logical_count', got list"),
        ({"physical_to_logical_map": [[0, 1]]}, "x.json: holds physical_to_logical_map (a placement), not logical_count statistics"),
        ({"counts": [[1]]}, "x.json: missing key 'logical_count' (found: counts)"),
        ({"logical_count": [1, 2, 3]}, "x.json: logical_count must have shape [layers, experts] or [steps, layers, experts], got (3,)"),
        ({"logical_count": [[1, 2], [3]]}, "x.json: logical_count must be a rectangular array of numbers (rows of unequal length?)"),
        ({"logical_count": [[1.5, 2]]}, "x.json: logical_count must hold whole token counts (found 1.5)"),
        ({"logical_count": [[1, -2]]}, "x.json: logical_count must be >= 0 (found -2)"),
        ({"logical_count": [["a", "b"]]}, "x.json: logical_count must hold numbers, got dtype <U1"),
    ],
)
def test_json_errors(tmp_path, obj, message):
    with pytest.raises(InputError) as e:
        load_trace(write(tmp_path / "x.json", obj))
    assert str(e.value) == message


def test_invalid_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{logical_count: ")
    with pytest.raises(InputError, match=r"^x.json: invalid JSON at line 1 column 2"):
        load_trace(p)


def test_pt_needs_torch_or_reads_it(tmp_path, monkeypatch):
    import builtins
    import sys

    p = tmp_path / "dump.pt"
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.save({"logical_count": torch.tensor([[[1, 2], [3, 4]]]), "rank": 0}, p)
        t = load_trace(p)
        assert t.counts_per_step().tolist() == [[[1, 2], [3, 4]]]
    else:
        p.write_bytes(b"\x00")
    # without torch: a clear one-line error
    real_import = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *a, **k)

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(InputError, match=r"dump.pt: reading .pt files needs torch"):
        load_trace(p)
