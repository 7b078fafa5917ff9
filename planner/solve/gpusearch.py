"""Replicas onto the GPUs of one node: the exact per-node objective and a swap local search.

Stages 3 and 4 of the placement (docs/placement.md §5.3, §5.4) work node by node on the
per-node objective ``J_v`` of §5. :class:`NodeSearch` evaluates it for many candidate
positions at once and, for the search, scores every swap of one GPU's item with an item
elsewhere from per-move tables (a swap is two moves plus a correction for the tokens that
need both items) instead of re-evaluating each candidate: the tables are checked against the
full evaluation in the tests. Deterministic: the work budget is a number of evaluations
derived from the problem's sizes (:data:`ELEMENTS_PER_S`), the clock is only a safety stop.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from planner.solve.problem import PlacementCost

#: Smallest relative gain of the node objective for the swap search to take a move (smaller
#: gains are noise on a held-out trace and only cost time).
MIN_GAIN = 2e-5
#: Most candidates one position pass scores: every pair of up to 16 GPUs; with more GPUs (a
#: search over a whole cluster whose experts do not split over its nodes, e.g. DeepSeek-V3's 256
#: experts on 9 nodes) the costliest GPUs are each paired with every other GPU instead, since
#: scoring all g·(g−1)/2 pairs of 72 GPUs took ~7 s per pass and a 60 s plan ran out of time.
MAX_POSITION_PAIRS = 120
#: Array elements the search processes per second on one core (measured on a 2-core x86 VM);
#: converts the search's time budget into a deterministic number of evaluations.
ELEMENTS_PER_S = 5e7


@dataclass(frozen=True)
class NodeProblem:
    """The arrays of one node's GPU assignment (docs/placement.md §5.4).

    Legend: ``I`` replica items of the node (items), ``g`` its GPUs, ``nS`` planning steps,
    ``nT`` traffic steps (``nS``: per step, exact; 1: the mean step), ``K`` most items of a
    row, ``Rr`` / ``Ri`` distinct remote / intra rows. *Remote* tokens come from other nodes
    (one NIC copy, received at the lowest GPU they need); *intra* tokens from GPU ``src`` of
    this node (one NVLink copy per other GPU they need). A token needing one item of the node
    is a weight on that item; tokens needing several are rows of item ids padded with ``I``.
    """

    gpu_I: np.ndarray  #: int [I] starting GPU (0..g-1) of each item, ``S`` items per GPU
    gpus: int  #: g
    compute_ms_IS: np.ndarray  #: float [I, nS] expert ms of each item per step
    tokens_IS: np.ndarray  #: float [I, nS] tokens of each item per step (balance guard)
    remote_single_IT: np.ndarray  #: float [I, nT] remote tokens needing only item i
    remote_rows_RK: np.ndarray  #: int [Rr, K] items of each remote row (pad I)
    remote_step_R: np.ndarray  #: int [Rr] traffic step of each remote row
    remote_weight_R: np.ndarray  #: float [Rr] tokens of each remote row
    intra_single_IgT: np.ndarray  #: float [I, g, nT] intra tokens needing only item i, by source GPU
    intra_rows_RK: np.ndarray  #: int [Ri, K] items of each intra row (pad I)
    intra_src_R: np.ndarray  #: int [Ri] source GPU of each intra row
    intra_step_R: np.ndarray  #: int [Ri] traffic step of each intra row
    intra_weight_R: np.ndarray  #: float [Ri] tokens of each intra row
    fixed_nic_Tg: np.ndarray  #: float [nT, g] NIC copies per GPU the assignment cannot change
    migration_Ig: np.ndarray | None = None  #: float [I, g] migration ms of item i on GPU u


def _csr(rows_by_item: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverted index item -> (row, column) occurrences of a [rows, K] table of item ids
    (pad = n_items): ``ptr`` [n_items + 1], ``row``, ``col``."""
    r, c = np.nonzero(rows_by_item < n_items)
    it = rows_by_item[r, c]
    order = np.argsort(it, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(it, minlength=n_items))])
    return ptr, r[order], c[order]


class NodeSearch:
    """The per-node objective ``J_v`` (docs/placement.md §5) of a :class:`NodeProblem` and the
    swap local search over it.

    State: ``gpos`` [I] the current GPU of each item. Short names of the problem's arrays used
    below: ``F`` compute_ms_IS, ``tok`` tokens_IS, ``r1`` remote_single_IT, ``rsig`` /
    ``rstep`` / ``rw`` the remote rows, ``i1`` intra_single_IgT, ``isig`` / ``isrc`` /
    ``istep`` / ``iw`` the intra rows, ``nl`` = I.
    """

    def __init__(self, problem: NodeProblem, cost: PlacementCost) -> None:
        p = problem
        self.gpos = p.gpu_I.astype(np.int64).copy()
        self.g = p.gpus
        self.nl = p.gpu_I.size
        self.F = p.compute_ms_IS  # [nl, nS]
        self.tok = p.tokens_IS
        self.r1, self.rsig, self.rstep, self.rw = (p.remote_single_IT, p.remote_rows_RK, p.remote_step_R,
                                                   p.remote_weight_R)
        self.i1, self.isig, self.isrc, self.istep, self.iw = (p.intra_single_IgT, p.intra_rows_RK, p.intra_src_R,
                                                              p.intra_step_R, p.intra_weight_R)
        self.i1tot = self.i1.sum(axis=1)  # [nl, nT]
        xsend_Tg = p.fixed_nic_Tg
        self.nT = xsend_Tg.shape[0]
        self.xsend_max = xsend_Tg.max(axis=1) if xsend_Tg.size else np.zeros(self.nT)
        self.cost = cost
        self.k2 = 2.0 * (1.0 - cost.overlap)
        self.mig = p.migration_Ig
        self.rptr, self.rrow, self.rcol = _csr(self.rsig, self.nl)
        self.iptr, self.irow, self.icol = _csr(self.isig, self.nl)
        self.cap = np.inf
        self._recompute()

    def drop_intra(self) -> None:
        """Stop modelling NVLink traffic (used when it cannot bind next to the NIC)."""
        self.i1 = np.zeros_like(self.i1)
        self.i1tot = np.zeros_like(self.i1tot)
        self.isig = self.isig[:0]
        self.isrc, self.istep, self.iw = self.isrc[:0], self.istep[:0], self.iw[:0]
        self.iptr, self.irow, self.icol = _csr(self.isig, self.nl)
        self._recompute()

    # -- full evaluation ----------------------------------------------------------------------

    def _state(self, gpos_M: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-candidate (comp, tok, recv, isend, irecv, rfirst) for positions ``gpos_M`` [M, nl]."""
        M, g, nT = gpos_M.shape[0], self.g, self.nT
        onehot = np.zeros((M, self.nl, g))
        onehot[np.arange(M)[:, None], np.arange(self.nl)[None, :], gpos_M] = 1.0
        comp = np.einsum("mig,is->msg", onehot, self.F)
        tok = np.einsum("mig,is->msg", onehot, self.tok)
        recv = np.einsum("mig,it->mtg", onehot, self.r1)
        ext = np.concatenate([gpos_M, np.full((M, 1), g)], axis=1)  # pad -> g
        rfirst = np.zeros((M, 0), dtype=np.int64)
        if self.rsig.size:
            rfirst = ext[:, self.rsig].min(axis=2)  # [M, rows]
            key = (np.arange(M)[:, None] * nT + self.rstep[None, :]) * g + rfirst
            recv += np.bincount(key.ravel(), weights=np.tile(self.rw, M), minlength=M * nT * g).reshape(M, nT, g)
        # intra singles: item i at p, tokens from src: a copy src -> p when src != p
        isend = self.i1.sum(axis=0).T[None] - np.einsum("mis,ist->mts", onehot, self.i1)
        irecv = np.einsum("mig,it->mtg", onehot, self.i1tot) - np.einsum("mig,igt->mtg", onehot, self.i1)
        if self.isig.size:
            pos = ext[:, self.isig]  # [M, rows, K]
            seg = (np.arange(M)[:, None] * nT + self.istep[None, :]).ravel()
            snd, rcv = self._intra(pos.reshape(-1, pos.shape[2]), np.tile(self.isrc, M), np.tile(self.iw, M), seg, M * nT)
            isend += snd.reshape(M, nT, g)
            irecv += rcv.reshape(M, nT, g)
        return comp, tok, recv, isend, irecv, rfirst

    def _intra(self, pos: np.ndarray, src: np.ndarray, w: np.ndarray, seg: np.ndarray, nseg: int):
        """NVLink copies sent / received per (segment, position) by rows at positions ``pos``."""
        g = self.g
        sp = np.sort(pos, axis=1)
        valid = (sp < g) & (sp != src[:, None])
        valid[:, 1:] &= sp[:, 1:] != sp[:, :-1]
        send = np.bincount(seg * g + src, weights=w * valid.sum(axis=1), minlength=nseg * g)
        r_rows, r_cols = np.nonzero(valid)
        recv = np.bincount(seg[r_rows] * g + sp[r_rows, r_cols], weights=w[r_rows], minlength=nseg * g)
        return send, recv

    def _objective(self, comp, tok, recv, isend, irecv, mig) -> tuple[np.ndarray, np.ndarray]:
        """(objective [M], balance [M]) from per-candidate arrays."""
        c = self.cost
        compute = comp.max(axis=2).mean(axis=1)
        w_nic = np.maximum(recv.max(axis=2), self.xsend_max[None, :]) * c.token_bytes
        t_nic = c.nic.table_ms(w_nic)
        w_nvl = np.maximum(isend.max(axis=2), irecv.max(axis=2)) * c.token_bytes
        t_nvl = c.nvlink.table_ms(w_nvl)
        comm = self.k2 * np.maximum(t_nic, t_nvl).mean(axis=1)
        return compute + comm + mig, tok.mean(axis=1).max(axis=1)

    def link_ms(self) -> tuple[float, float]:
        """Mean (t_nvlink, t_nic) of the current state, ms."""
        c = self.cost
        w_nic = np.maximum(self.recv.max(axis=1), self.xsend_max) * c.token_bytes
        w_nvl = np.maximum(self.isend.max(axis=1), self.irecv.max(axis=1)) * c.token_bytes
        return float((w_nvl * c.nvlink.ms_per_byte).mean()), float((w_nic * c.nic.ms_per_byte).mean())

    def _mig_total(self, gpos_M: np.ndarray) -> np.ndarray:
        if self.mig is None:
            return np.zeros(len(gpos_M))
        return self.mig[np.arange(self.nl)[None, :], gpos_M].sum(axis=1)

    def evaluate(self, gpos_M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        comp, tok, recv, isend, irecv, _ = self._state(gpos_M)
        return self._objective(comp, tok, recv, isend, irecv, self._mig_total(gpos_M))

    def _recompute(self) -> None:
        comp, tok, recv, isend, irecv, rfirst = self._state(self.gpos[None, :])
        self.comp, self.tokl, self.recv, self.isend, self.irecv = comp[0], tok[0], recv[0], isend[0], irecv[0]
        self.rfirst = rfirst[0]
        self._rows_cache = None
        val, bal = self._objective(comp, tok, recv, isend, irecv, self._mig_total(self.gpos[None, :]))
        self.value, self.balance = float(val[0]), float(bal[0])

    # -- swap tables -----------------------------------------------------------------------------
    #
    # Swapping a (at p*) with b (at p_b) is two moves, a -> p_b and b -> p*. For a move of item i
    # to position q, the change of every traffic vector is tabulated from the rows holding i
    # ("others" = the row's other items, where they are now); the rows holding both a and b get a
    # correction (a swap inside a row leaves its set of positions unchanged).

    def _entries(self, ptr: np.ndarray, rr: np.ndarray, cc: np.ndarray, items: np.ndarray):
        """(row, column, index into ``items``) of every occurrence of ``items`` in the rows."""
        lens = ptr[items + 1] - ptr[items]
        seg = np.repeat(np.arange(items.size), lens)
        starts = np.repeat(ptr[items], lens)
        off = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        return rr[starts + off], cc[starts + off], seg

    def _row_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Cached for the current positions: ``mex`` [remote rows, K] the lowest position of a
        row's other items (without the item in that column), ``cnt`` [intra rows, g] items of a
        row per position."""
        if self._rows_cache is None:
            g = self.g
            ext = np.append(self.gpos, g)
            mex = np.zeros((0, self.rsig.shape[1]), dtype=np.int64)
            if self.rsig.size:
                pos = ext[self.rsig]
                rmin = self.rfirst[:, None]
                cnt_min = (pos == rmin).sum(axis=1, keepdims=True)
                second = np.where(pos > rmin, pos, g).min(axis=1, keepdims=True)
                mex = np.where((pos == rmin) & (cnt_min == 1), second, rmin)
            cnt = np.zeros((0, g))
            if self.isig.size:
                pos = ext[self.isig]
                ni, K = pos.shape
                cnt = np.bincount((np.arange(ni)[:, None] * (g + 1) + pos).ravel(), minlength=ni * (g + 1))
                cnt = cnt.reshape(ni, g + 1)[:, :g].astype(np.float64)
            self._rows_cache = (mex, cnt)
        return self._rows_cache

    def _swap_tables(self, pstar: int, A: np.ndarray, B: np.ndarray):
        """Traffic after every swap (a in A at p*, b in B elsewhere): arrays [|A|, |B|, nT, g]
        (NIC receives, NVLink sends, NVLink receives)."""
        posB = self.gpos[B]
        idxB = np.full(self.nl, -1)
        idxB[B] = np.arange(B.size)
        inA = np.zeros(self.nl + 1, dtype=bool)
        inA[A] = True
        DRA, DRB, CR = self._remote_tables(pstar, A, B, idxB, inA)
        DSA, DVA, DSB, DVB, CS, CV = self._intra_tables(pstar, A, B, idxB, inA)
        recv = self.recv[None, None] + DRA[:, posB] + DRB[None] + CR
        isend = self.isend[None, None] + DSA[:, posB] + DSB[None] + CS
        irecv = self.irecv[None, None] + DVA[:, posB] + DVB[None] + CV
        return recv, isend, irecv

    def _remote_tables(self, pstar: int, A: np.ndarray, B: np.ndarray, idxB: np.ndarray, inA: np.ndarray):
        """NIC-receive changes of the moves a -> q ([|A|, g, nT, g]), b -> p* ([|B|, nT, g]) and the
        correction of rows holding both ([|A|, |B|, nT, g]); ``idxB`` [nl] index of an item in B
        (-1 elsewhere), ``inA`` [nl + 1] whether an item is in A."""
        g, nT, nl = self.g, self.nT, self.nl
        nA, nB = A.size, B.size
        posB = self.gpos[B]
        q_all = np.arange(g)
        # remote rows: received at the lowest position a row needs
        DRA = np.zeros((nA, g, nT, g))  # a -> q
        DRB = np.zeros((nB, nT, g))  # b -> p*
        CR = np.zeros((nA, nB, nT, g))
        # singles
        r1A, r1B = self.r1[A], self.r1[B]
        DRA[:, :, :, pstar] -= r1A[:, None, :]
        for q in range(g):
            DRA[:, q, :, q] += r1A
        DRA[:, pstar] = 0.0
        DRB[np.arange(nB), :, posB] -= r1B
        DRB[:, :, pstar] += r1B
        mex, _ = self._row_stats()
        if self.rsig.size:
            rmin = self.rfirst
            w, t = self.rw, self.rstep
            # a -> q for every q
            r, c, ai = self._entries(self.rptr, self.rrow, self.rcol, A)
            if r.size:
                nf = np.minimum(mex[r, c][:, None], q_all[None, :])  # [n, g]
                base = ((ai[:, None] * g + q_all[None, :]) * nT + t[r][:, None]) * g
                ww = np.repeat(w[r][:, None], g, axis=1)
                d = np.bincount((base + nf).ravel(), weights=ww.ravel(), minlength=nA * g * nT * g)
                d -= np.bincount((base + rmin[r][:, None]).ravel(), weights=ww.ravel(), minlength=nA * g * nT * g)
                DRA += d.reshape(nA, g, nT, g)
                DRA[:, pstar] = 0.0
                # corrections: rows holding a and some b
                rows_k = np.repeat(r, self.rsig.shape[1])
                cols_k = np.tile(np.arange(self.rsig.shape[1]), r.size)
                ai_k = np.repeat(ai, self.rsig.shape[1])
                ca_k = np.repeat(c, self.rsig.shape[1])
                items_k = self.rsig[rows_k, cols_k]
                ok = (items_k < nl) & ~inA[items_k]
                rows_k, cols_k, ai_k, ca_k, items_k = rows_k[ok], cols_k[ok], ai_k[ok], ca_k[ok], items_k[ok]
                if rows_k.size:
                    bi = idxB[items_k]
                    key = ((ai_k * nB + bi) * nT + t[rows_k]) * g
                    wk = w[rows_k]
                    n = nA * nB * nT * g
                    cr = 2.0 * np.bincount(key + rmin[rows_k], weights=wk, minlength=n)
                    cr -= np.bincount(key + mex[rows_k, ca_k], weights=wk, minlength=n)
                    cr -= np.bincount(key + mex[rows_k, cols_k], weights=wk, minlength=n)
                    CR += cr.reshape(nA, nB, nT, g)
            # b -> p* for every b
            r, c, bi = self._entries(self.rptr, self.rrow, self.rcol, B)
            if r.size:
                nf = np.minimum(mex[r, c], pstar)
                key = (bi * nT + t[r]) * g
                d = np.bincount(key + nf, weights=w[r], minlength=nB * nT * g)
                d -= np.bincount(key + rmin[r], weights=w[r], minlength=nB * nT * g)
                DRB += d.reshape(nB, nT, g)
        return DRA, DRB, CR

    def _intra_tables(self, pstar: int, A: np.ndarray, B: np.ndarray, idxB: np.ndarray, inA: np.ndarray):
        """NVLink send / receive changes of the moves a -> q and b -> p* and the corrections of
        rows holding both (shapes and arguments as :meth:`_remote_tables`)."""
        g, nT, nl = self.g, self.nT, self.nl
        nA, nB = A.size, B.size
        posB = self.gpos[B]
        q_all = np.arange(g)
        _, cnt = self._row_stats()
        # intra rows (NVLink): one copy per distinct other position
        DSA = np.zeros((nA, g, nT, g))
        DVA = np.zeros((nA, g, nT, g))
        DSB = np.zeros((nB, nT, g))
        DVB = np.zeros((nB, nT, g))
        CS = np.zeros((nA, nB, nT, g))
        CV = np.zeros((nA, nB, nT, g))
        if self.i1tot.any():
            i1, tot = self.i1, self.i1tot  # [nl, g(src), nT], [nl, nT]
            for q in range(g):
                if q == pstar:
                    continue
                DSA[:, q, :, pstar] += i1[A, pstar]
                DSA[:, q, :, q] -= i1[A, q]
                DVA[:, q, :, pstar] -= tot[A] - i1[A, pstar]
                DVA[:, q, :, q] += tot[A] - i1[A, q]
            ar = np.arange(nB)
            DSB[ar, :, posB] += i1[B, posB]
            DSB[:, :, pstar] -= i1[B, pstar]
            DVB[ar, :, posB] -= tot[B] - i1[B, posB]
            DVB[:, :, pstar] += tot[B] - i1[B, pstar]
        if self.isig.size:
            w, t, src = self.iw, self.istep, self.isrc
            r, c, ai = self._entries(self.iptr, self.irow, self.icol, A)
            if r.size:
                removed = (cnt[r, pstar] == 1) & (src[r] != pstar)  # p* leaves the row's set
                added = (cnt[r] == 0) & (q_all[None, :] != src[r][:, None])  # [n, g]: q joins
                added[:, pstar] = False
                n = nA * g * nT * g
                base = ((ai[:, None] * g + q_all[None, :]) * nT + t[r][:, None]) * g  # [n, g]
                wr = w[r][:, None] * np.ones((1, g))
                rem_w = (removed[:, None] * wr).ravel()
                DSA += (np.bincount((base + src[r][:, None]).ravel(), weights=added.ravel() * wr.ravel() - rem_w,
                                    minlength=n)).reshape(nA, g, nT, g)
                DVA += (np.bincount((base + q_all[None, :]).ravel(), weights=(added * wr).ravel(), minlength=n)
                        - np.bincount((base + pstar).ravel(), weights=rem_w, minlength=n)).reshape(nA, g, nT, g)
                DSA[:, pstar] = 0.0
                DVA[:, pstar] = 0.0
                # corrections: rows holding a and some b (the swap keeps the row's positions)
                K = self.isig.shape[1]
                rows_k = np.repeat(r, K)
                cols_k = np.tile(np.arange(K), r.size)
                ai_k = np.repeat(ai, K)
                items_k = self.isig[rows_k, cols_k]
                ok = (items_k < nl) & ~inA[items_k]
                rows_k, ai_k, items_k = rows_k[ok], ai_k[ok], items_k[ok]
                if rows_k.size:
                    bi = idxB[items_k]
                    pbk = self.gpos[items_k]
                    sk = src[rows_k]
                    wk = w[rows_k]
                    rem_a = ((cnt[rows_k, pstar] == 1) & (sk != pstar)) * wk
                    rem_b = ((cnt[rows_k, pbk] == 1) & (sk != pbk)) * wk
                    key = ((ai_k * nB + bi) * nT + t[rows_k]) * g
                    n = nA * nB * nT * g
                    CS += np.bincount(key + sk, weights=rem_a + rem_b, minlength=n).reshape(nA, nB, nT, g)
                    CV += (np.bincount(key + pstar, weights=rem_a, minlength=n)
                           + np.bincount(key + pbk, weights=rem_b, minlength=n)).reshape(nA, nB, nT, g)
            r, c, bi = self._entries(self.iptr, self.irow, self.icol, B)
            if r.size:
                pb_r = self.gpos[B][bi]
                removed = (cnt[r, pb_r] == 1) & (src[r] != pb_r)
                added = (cnt[r, pstar] == 0) & (src[r] != pstar)
                key = (bi * nT + t[r]) * g
                n = nB * nT * g
                DSB += (np.bincount(key + src[r], weights=(added.astype(float) - removed) * w[r], minlength=n)).reshape(nB, nT, g)
                DVB += (np.bincount(key + pstar, weights=added * w[r], minlength=n)
                        - np.bincount(key + pb_r, weights=removed * w[r], minlength=n)).reshape(nB, nT, g)
        return DSA, DVA, DSB, DVB, CS, CV

    def _swap_eval(self, pstar: int) -> tuple[float, int, int]:
        """Best feasible swap between an item on p* and an item elsewhere: (value, a, b)."""
        A = np.nonzero(self.gpos == pstar)[0]
        B = np.nonzero(self.gpos != pstar)[0]
        if A.size == 0 or B.size == 0:
            return np.inf, -1, -1
        nA, nB = A.size, B.size
        posB = self.gpos[B]
        recv, isend, irecv = self._swap_tables(pstar, A, B)
        M = nA * nB
        comp = np.repeat(self.comp[None], M, axis=0).reshape(nA, nB, *self.comp.shape)
        tok = np.repeat(self.tokl[None], M, axis=0).reshape(nA, nB, *self.tokl.shape)
        ia = np.repeat(np.arange(nA), nB)
        ib = np.tile(np.arange(nB), nA)
        dF = self.F[B][ib] - self.F[A][ia]  # [M, nS]
        dT = self.tok[B][ib] - self.tok[A][ia]
        comp = comp.reshape(M, *self.comp.shape)
        tok = tok.reshape(M, *self.tokl.shape)
        ar = np.arange(M)
        comp[ar, :, pstar] += dF
        comp[ar, :, posB[ib]] -= dF
        tok[ar, :, pstar] += dT
        tok[ar, :, posB[ib]] -= dT
        if self.mig is not None:
            a_, b_ = A[ia], B[ib]
            mig = (self.mig[np.arange(self.nl), self.gpos].sum() + self.mig[a_, posB[ib]] + self.mig[b_, pstar]
                   - self.mig[a_, pstar] - self.mig[b_, posB[ib]])
        else:
            mig = np.zeros(M)
        val, bal = self._objective(comp, tok, recv.reshape(M, self.nT, self.g), isend.reshape(M, self.nT, self.g),
                                   irecv.reshape(M, self.nT, self.g), mig)
        val = self._feasible(val, bal)
        j = int(np.argmin(val))
        jj = (j // nB, j % nB)
        self._pending = (comp[j], tok[j], recv[jj], isend[jj], irecv[jj], float(val[j]), float(bal[j]))
        return float(val[j]), int(A[ia[j]]), int(B[ib[j]])

    def _apply_swap(self, a: int, b: int) -> None:
        """Take the swap the last :meth:`_swap_eval` found best (its arrays are kept)."""
        self.gpos[a], self.gpos[b] = self.gpos[b], self.gpos[a]
        self.comp, self.tokl, self.recv, self.isend, self.irecv, self.value, self.balance = (
            x.copy() if isinstance(x, np.ndarray) else x for x in self._pending
        )
        if self.rsig.size:
            self.rfirst = np.append(self.gpos, self.g)[self.rsig].min(axis=1)
        self._rows_cache = None

    # -- search -------------------------------------------------------------------------------

    def _feasible(self, val: np.ndarray, bal: np.ndarray) -> np.ndarray:
        return np.where(bal <= self.cap * (1 + 1e-12) + 1e-9, val, np.inf)

    def _improves(self, val: float, rel: float = 1e-12) -> bool:
        return val < self.value - rel * max(1e-12, abs(self.value))

    def exhaustive(self, all_gpos: np.ndarray, chunk: int = 512, guard: bool = True) -> None:
        """Score every assignment in ``all_gpos`` [M, nl] and keep the best (within the balance
        cap when ``guard``)."""
        best_val, best = (self.value if guard or self.balance <= self.cap else np.inf), None
        for c0 in range(0, len(all_gpos), chunk):
            val, bal = self.evaluate(all_gpos[c0:c0 + chunk])
            if guard:
                val = self._feasible(val, bal)
            j = int(np.argmin(val))
            if val[j] < best_val - 1e-12 * max(1.0, abs(best_val)):
                best_val, best = float(val[j]), all_gpos[c0 + j]
        if best is not None:
            self.gpos = best.copy()
            self._recompute()

    def position_pairs(self) -> list[tuple[int, int]]:
        """The position swaps a pass tries: every pair when there are at most
        :data:`MAX_POSITION_PAIRS`; else each of the costliest GPUs (:meth:`_position_order`)
        with every other GPU, as many of them as keep the pass within that count."""
        g = self.g
        if g * (g - 1) // 2 <= MAX_POSITION_PAIRS:
            return list(itertools.combinations(range(g), 2))
        top = self._position_order()[: max(1, MAX_POSITION_PAIRS // (g - 1))]
        return sorted({(min(p, q), max(p, q)) for p in top for q in range(g) if q != p})

    def position_pass(self) -> bool:
        """Try swapping two positions' whole slot sets (:meth:`position_pairs`); take the best if
        it improves."""
        g = self.g
        if g < 2:
            return False
        pairs = self.position_pairs()
        cand = np.repeat(self.gpos[None], len(pairs), axis=0)
        for m, (p, q) in enumerate(pairs):
            row = cand[m]
            mp, mq = row == p, row == q
            row[mp], row[mq] = q, p
        val = self._feasible(*self.evaluate(cand))
        j = int(np.argmin(val))
        if self._improves(float(val[j])):
            self.gpos = cand[j]
            self._recompute()
            return True
        return False

    def _position_order(self) -> list[int]:
        """GPUs by how much they cost now (largest NIC receive / compute / NVLink first)."""
        c = self.cost
        nic = self.recv.mean(axis=0) * c.token_bytes * c.nic.ms_per_byte
        nvl = np.maximum(self.isend, self.irecv).mean(axis=0) * c.token_bytes * c.nvlink.ms_per_byte
        score = self.comp.mean(axis=0) + self.k2 * np.maximum(nic, nvl)
        return [int(p) for p in np.argsort(-score, kind="stable")]

    def full_elements(self) -> int:
        """Array elements one full evaluation of a candidate touches."""
        return int(self.rsig.size + 4 * self.isig.size + self.nl * self.g * (self.F.shape[1] + 3 * self.nT) + 100)

    def eval_elements(self) -> int:
        """Array elements one neighbourhood evaluation touches (the work estimate)."""
        per_pos = self.nl // self.g
        rows = 3 * self.rsig.size + 10 * self.isig.size  # intra rows sort and scatter more
        return int(rows + per_pos * (self.nl - per_pos) * (self.F.shape[1] + 3 * self.nT) * self.g + 1000)

    def eval_budget(self, seconds: float) -> int:
        """Neighbourhood evaluations that fit in ``seconds`` at :data:`ELEMENTS_PER_S`."""
        return int(np.clip(seconds * ELEMENTS_PER_S / self.eval_elements(), 4, 400))

    def run(self, max_evals: int, deadline: float) -> int:
        """Best-improvement swap search: for the costliest GPU first, every swap of one of its
        items with an item elsewhere; take the best improving swap, else try the next GPU; when
        no GPU has one, try swapping whole GPUs. Deterministic; returns accepted moves."""
        if self.nl < 2 or self.g < 2:
            return 0
        accepted = 0
        evals = 0
        self.evals = 0
        self.position_pass()
        while evals < max_evals and time.perf_counter() < deadline:
            moved = False
            for pstar in self._position_order():
                if evals >= max_evals or time.perf_counter() > deadline:
                    break
                evals += 1
                val, a, b = self._swap_eval(pstar)
                if self._improves(val, MIN_GAIN):
                    self._apply_swap(a, b)
                    accepted += 1
                    if accepted % 16 == 0:  # refresh from scratch now and then (rounding drift)
                        self._recompute()
                    moved = True
                    break
            if not moved:
                evals += 1
                if not self.position_pass():
                    break
        self.evals = evals
        return accepted
