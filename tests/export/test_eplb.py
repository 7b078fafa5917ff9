"""DeepSeek EPLB maps: phy2log, log2phy, logcnt with EPLB's shapes and dtypes."""

import numpy as np
import pytest

from planner.errors import InputError
from planner.exports import export, import_placement


def test_shapes_dtypes_and_padding_as_rebalance_experts_returns(plan_replicas, tmp_path):
    out = tmp_path / "eplb.npz"
    export(plan_replicas, "eplb", out)
    z = np.load(out)
    phy2log, log2phy, logcnt = z["phy2log"], z["log2phy"], z["logcnt"]
    assert [a.dtype for a in (phy2log, log2phy, logcnt)] == [np.int64] * 3
    assert phy2log.shape == (26, 72) and logcnt.shape == (26, 64)
    # EPLB: maxlogcnt = logcnt.max(), not num_redundant + 1
    assert log2phy.shape == (26, 64, int(logcnt.max()))
    assert int(logcnt.max()) < 9
    assert np.array_equal(logcnt, (log2phy >= 0).sum(-1))
    rows = np.arange(26)[:, None, None]
    valid = log2phy >= 0
    assert np.all(np.where(valid, phy2log[rows, np.maximum(log2phy, 0)], -1) == np.where(valid, np.arange(64)[None, :, None], -1))
    assert set(np.unique(log2phy[~valid])) == {-1}


def test_without_replicas_log2phy_is_the_inverse_permutation(plan_perm):
    r = export(plan_perm, "eplb")
    assert r.shapes() == {"phy2log": [26, 64], "log2phy": [26, 64, 1], "logcnt": [26, 64]}
    phy2log = r.payload["phy2log"]
    # without replicas log2phy is the inverse permutation
    inv = np.argsort(phy2log, axis=1)
    assert np.array_equal(r.payload["log2phy"][:, :, 0], inv)
    assert r.flags == []


def test_a_log2phy_that_disagrees_is_refused(plan_replicas, tmp_path):
    r = export(plan_replicas, "eplb")
    log2phy = r.payload["log2phy"].copy()
    e = 5
    other = int(np.nonzero(r.payload["phy2log"][0] != e)[0][0])  # a slot of another expert
    log2phy[0, e, 0] = other
    p = tmp_path / "bad.npz"
    np.savez(p, phy2log=r.payload["phy2log"], log2phy=log2phy, logcnt=r.payload["logcnt"])
    with pytest.raises(InputError, match=rf"bad.npz: log2phy\[0\]\[{e}\] does not list the slots phy2log\[0\] gives expert {e}"):
        import_placement(p, "eplb")


def test_pt_holds_int64_tensors(plan_replicas, tmp_path):
    torch = pytest.importorskip("torch")
    out = tmp_path / "eplb.pt"
    export(plan_replicas, "eplb", out)
    d = torch.load(out, weights_only=True)
    assert sorted(d) == ["log2phy", "logcnt", "phy2log"]
    assert all(v.dtype == torch.int64 for v in d.values())
