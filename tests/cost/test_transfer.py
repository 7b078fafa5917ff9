"""Host↔device copy time from the measured PCIe curves."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.transfer import d2h_ms, h2d_ms
from planner.errors import InputError
from planner.specs.hardware import load_hardware

H100 = load_hardware("h100-sxm")


def test_h2d_64mb_matches_facts():
    # docs/facts.md §2: 54-55 GB/s from 64 MB up, about 7 µs per copy
    want = (64e6 / 54.6e9 + 7e-6) * 1e3
    assert h2d_ms(H100, 64e6) == pytest.approx(want, rel=0.01)


def test_measured_points_reproduced_exactly():
    for curve, fn in ((H100.pcie.h2d_pinned, h2d_ms), (H100.pcie.d2h_pinned, lambda hw, n: d2h_ms(hw, n))):
        sizes = [p.bytes for p in curve]
        want = [p.bytes / (p.gbps * 1e9) * 1e3 for p in curve]
        np.testing.assert_allclose(fn(H100, sizes), want, rtol=1e-12)
    sizes = [p.bytes for p in H100.pcie.h2d_pageable]
    want = [p.bytes / (p.gbps * 1e9) * 1e3 for p in H100.pcie.h2d_pageable]
    np.testing.assert_allclose(h2d_ms(H100, sizes, pinned=False), want, rtol=1e-12)


def test_latency_plus_bandwidth_outside_the_curve():
    # beyond the last point the transfer bandwidth of the last point holds: t = L + n / B_last
    last = H100.pcie.h2d_pinned[-1]
    b_last = last.bytes / (last.bytes / (last.gbps * 1e9) - 7e-6)
    n = 4 * last.bytes
    assert h2d_ms(H100, n) == pytest.approx((7e-6 + n / b_last) * 1e3, rel=1e-12)
    # a tiny copy costs about the fixed latency
    assert h2d_ms(H100, 1) == pytest.approx(7e-3, rel=1e-3)


def test_vectorized_zero_and_monotone():
    n = np.array([[0, 1 << 10], [1 << 20, 1 << 30]])
    t = h2d_ms(H100, n)
    assert t.shape == (2, 2) and t[0, 0] == 0.0
    sizes = np.logspace(3, 10, 200)
    assert np.all(np.diff(h2d_ms(H100, sizes)) > 0)


def test_known_expert_copies():
    # docs/facts.md §2: a Mixtral expert (352 MB) copies in 6.5 ms, a Qwen3-30B expert (9.44 MB) in 0.17 ms
    assert h2d_ms(H100, 352.3e6) == pytest.approx(6.5, rel=0.03)
    assert h2d_ms(H100, 9.44e6) == pytest.approx(0.17, rel=0.08)


def test_pageable_is_slower_and_may_be_missing():
    assert h2d_ms(H100, 64e6, pinned=False) > 3 * h2d_ms(H100, 64e6)
    with pytest.raises(InputError, match="h2d_pageable is not in the profile"):
        h2d_ms(load_hardware("a100-sxm-80gb"), 1e6, pinned=False)


def test_negative_bytes():
    with pytest.raises(InputError, match=r">= 0 bytes \(got -1\)"):
        h2d_ms(H100, [10, -1])


def test_copy_beside_compute():
    from planner.cost.transfer import h2d_during_compute_ms, overlapped_ms

    # docs/facts.md §2: a 352 MB copy during GEMMs took 7.67 ms against 6.93 ideal and 13.43 serial
    assert overlapped_ms(6.93, 6.50, 0.89) == pytest.approx(6.93 + 0.11 * 6.50)
    assert overlapped_ms(6.93, 6.50, 0.89) == pytest.approx(7.67, rel=0.01)
    np.testing.assert_allclose(overlapped_ms([1.0, 3.0], [2.0, 1.0], 0.0), [3.0, 4.0])  # serial
    np.testing.assert_allclose(overlapped_ms([1.0, 3.0], [2.0, 1.0], 1.0), [2.0, 3.0])  # perfect
    assert H100.pcie.copy_compute_overlap == 0.89
    copy = h2d_ms(H100, 352e6)
    assert h2d_during_compute_ms(H100, 352e6, 0.0) == pytest.approx(copy)
    with pytest.raises(InputError, match="overlap must be in"):
        overlapped_ms(1.0, 1.0, 2.0)
