"""A lower bound on the planning objective that holds for every placement with the given slots.

It turns the solver's objective into a gap (docs/placement.md §6): tight where expert compute
dominates, loose where inter-node traffic does (no placement-independent argument bounds a
token's destination nodes without solving the placement itself).
"""

from __future__ import annotations

import math

import numpy as np

from planner.solve.problem import PlacementInputs


def lower_bound(inp: PlacementInputs) -> float:
    """Placement-independent lower bound on the planning objective, ms per step (docs/placement.md §6).

    Per step ``s``, layer and expert-data-parallel group: compute ≥ the mean GPU time with each
    expert's tokens ``n`` [S, L, E] costed at ``max(f(1), c_min · n)``, and communication ≥ the
    latency plus the NVLink time of the ``⌈k/S⌉ − 1`` copies every token needs.
    """
    c = inp.cost
    L, E, G, S = inp.num_layers, inp.num_experts, inp.num_gpus, inp.slots_per_gpu
    n_steps = inp.num_steps
    k = int((inp.ids_LTk >= 0).sum(axis=2).min())  # fewest experts a token uses (-1: none), so still a bound
    group_T = np.zeros(inp.ids_LTk.shape[1], dtype=np.int64) if inp.group_T is None else inp.group_T
    f1 = float(np.asarray(c.ffn_ms(np.array([1.0])))[0])
    need = max(0, math.ceil(k / S) - 1)  # copies every token needs: k experts do not fit in S slots
    per_group_SL = []
    for grp in range(int(group_T.max()) + 1):
        m = group_T == grp
        step = inp.step_T[m].astype(np.int64)
        ids = inp.ids_LTk[:, m].astype(np.int64)
        flat = ((step[None, :, None] * L + np.arange(L)[:, None, None]) * E + ids)[ids >= 0]
        n_SLE = np.bincount(flat, minlength=n_steps * L * E).reshape(n_steps, L, E).astype(np.float64)
        top = max(1.0, float(n_SLE.max()))
        grid = np.unique(np.concatenate([np.geomspace(1.0, top, 256), [top]]))
        c_min = float((np.asarray(c.ffn_ms(grid), dtype=np.float64) / grid).min())
        h = np.where(n_SLE > 0, np.maximum(f1, c_min * n_SLE), 0.0)
        lb_SL = h.sum(axis=2) / G
        if need and G > 1:
            per_gpu = np.bincount(step * G + inp.src_T[m].astype(np.int64), minlength=n_steps * G).reshape(n_steps, G)
            worst = per_gpu.max(axis=1) * need * c.token_bytes
            t = np.where(worst > 0, c.nvlink.latency_ms + worst * min(c.nvlink.ms_per_byte, c.nic.ms_per_byte), 0.0)
            lb_SL = lb_SL + 2.0 * (1.0 - c.overlap) * t[:, None]
        per_group_SL.append(lb_SL)
    return float(np.max(per_group_SL, axis=0).sum(axis=1).mean())
