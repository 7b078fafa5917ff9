"""Sequences in the trace contract: ``seq_id`` / ``pos`` validated, kept by selections, and
round-tripped through ``.npz``."""

from __future__ import annotations

import numpy as np
import pytest

from planner.errors import InputError
from planner.traces import Trace, load_trace, save_trace


def _trace(**kw):
    ids = np.array([[[0, 1], [1, 2], [2, 3], [0, 3]]])  # 1 layer, 4 tokens, k = 2
    return Trace(ids, 4, step=np.array([0, 0, 1, 1]), **kw)


def test_npz_round_trip_keeps_sequences(tmp_path):
    t = _trace(seq_id=np.array([7, 3, 7, 3]), pos=np.array([0, 0, 1, 1]))
    save_trace(t, tmp_path / "t.npz")
    back = load_trace(tmp_path / "t.npz")
    assert back.has_sequences
    assert back.seq_id.tolist() == [7, 3, 7, 3]
    assert back.pos.tolist() == [0, 0, 1, 1]
    assert back.select_steps([1]).seq_id.tolist() == [7, 3]
    assert back.select_steps([1]).pos.tolist() == [1, 1]


def test_trace_without_sequences_has_none():
    t = _trace()
    assert not t.has_sequences and t.seq_id is None and t.pos is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pos": np.array([0, 1, 2, 3])}, "pos needs seq_id"),
        ({"seq_id": np.array([0, 0, 1])}, "seq_id must have shape [tokens] = (4,)"),
        ({"seq_id": np.array([0, -1, 1, 1])}, "seq_id must be >= 0 (found -1 at token 1)"),
        ({"seq_id": np.array([0.0, 0, 1, 1])}, "seq_id must hold integers"),
        ({"seq_id": np.array([0, 0, 1, 1]), "pos": np.array([1, 0, 0, 1])},
         "pos must increase within a sequence in trace order (token 1 of sequence 0 has pos 0 after pos 1)"),
    ],
)
def test_sequence_errors_name_the_array_and_rule(kw, message):
    with pytest.raises(InputError) as e:
        _trace(**kw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
