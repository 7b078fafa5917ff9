"""In-memory routing traces: which experts each token chose at each MoE layer.

Two kinds, told apart by ``has_tokens``:

- :class:`Trace` — per-token routing (``topk_ids`` [L, T, k]); every statistic is available.
  An id of :data:`NULL_EXPERT` (-1) is "no expert": a token that used fewer than k experts
  (threshold routing) or chose an AdaMoE null expert. It costs nothing: counts, compute and
  traffic skip it (:func:`expert_counts`, :attr:`Trace.valid`).
- :class:`CountsTrace` — per-step expert counts only (``counts_per_step`` [S, L, E]), as engines
  such as SGLang record them. Per-token statistics (cross-layer transitions, co-activation,
  dispatch traffic) cannot be computed from it: code that needs them checks ``has_tokens`` and
  says so.

Legend: L = MoE layers, T = tokens, k = top_k, E = experts per layer, S = steps, R = ranks.

Both are validated at construction; a violation raises :class:`~planner.errors.InputError`
with one line naming the source, the array and the rule, e.g.
``trace.npz: topk_ids values must be in [-1, 64) (-1 = no expert; found 70 at layer 2)``.
"""

from __future__ import annotations

import numpy as np

from planner.errors import InputError
from planner.specs.model import MAX_EXPERTS, ModelSpec

StepSelector = slice | np.ndarray | list[int] | list[bool]

#: The id of "no expert" in ``topk_ids``: a choice that costs nothing (docs/contracts.md).
NULL_EXPERT = -1


def expert_counts(
    ids_LTk: np.ndarray, num_experts: int, step_T: np.ndarray | None = None, num_steps: int | None = None
) -> np.ndarray:
    """Tokens routed to each expert, null choices (-1) skipped: int64 [L, E], or [S, L, E] per
    step when ``step_T`` [T] (step indices in ``[0, num_steps)``) is given."""
    ids = np.asarray(ids_LTk, dtype=np.int64)
    L, E = ids.shape[0], int(num_experts)
    base = (np.arange(L, dtype=np.int64) * E)[:, None, None]
    S = 1
    if step_T is not None:
        S = int(num_steps) if num_steps is not None else (int(np.max(step_T)) + 1 if np.size(step_T) else 0)
        base = base + np.asarray(step_T, dtype=np.int64)[None, :, None] * (L * E)
    flat = (base + ids)[ids >= 0]
    out = np.bincount(flat, minlength=S * L * E)
    return out.reshape(L, E) if step_T is None else out.reshape(S, L, E)


def _require_int(arr: np.ndarray, name: str, source: str) -> None:
    # dtype kinds i/u only: numpy files timedelta64 under np.integer, but its values are not ints
    if arr.dtype.kind not in "iu":
        raise InputError(f"{source}: {name} must hold integers, got dtype {arr.dtype}")


def _as_int64(arr: np.ndarray, name: str, source: str) -> np.ndarray:
    """An integer array as int64; uint64 values above the int64 range are an error, not a wrap."""
    _require_int(arr, name, source)
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{source}: {name} values must fit in int64 (found {int(arr.max())})")
    return arr.astype(np.int64)


def check_ids_range(ids: np.ndarray, num_experts: int, source: str) -> None:
    """``topk_ids`` values must lie in [-1, E): -1 is no expert, anything else an error line."""
    bad = (ids < NULL_EXPERT) | (ids >= num_experts)
    if bad.any():
        L = ids.shape[0]
        layer = int(np.argmax(bad.reshape(L, -1).any(axis=1)))
        value = int(ids[layer][bad[layer]][0])
        raise InputError(
            f"{source}: topk_ids values must be in [-1, {num_experts}) (-1 = no expert; found {value} at layer {layer})"
        )


def _check_num_experts(num_experts: int, source: str) -> None:
    if not 0 < num_experts <= MAX_EXPERTS:
        rule = "must be > 0" if num_experts <= 0 else f"must be <= {MAX_EXPERTS}"
        raise InputError(f"{source}: num_experts {rule} (got {num_experts})")


def _step_mask(selector: StepSelector, num_steps: int, source: str) -> np.ndarray:
    """Boolean mask [S] from a slice, a boolean mask [S] or integer step positions."""
    mask = np.zeros(num_steps, dtype=bool)
    if isinstance(selector, slice):
        mask[selector] = True
        return mask
    sel = np.asarray(selector)
    if sel.dtype == bool:
        if sel.shape != (num_steps,):
            raise InputError(f"{source}: step mask must have shape ({num_steps},), got {sel.shape}")
        return sel.copy()
    if not np.issubdtype(sel.dtype, np.integer) or sel.ndim != 1:
        raise InputError(f"{source}: select_steps takes a slice, a boolean mask or step positions")
    if sel.size and (sel.min() < -num_steps or sel.max() >= num_steps):
        raise InputError(f"{source}: step positions must be in [0, {num_steps})")
    mask[sel] = True
    return mask


def _split_count(num_steps: int, train_fraction: float, source: str) -> int:
    """How many leading steps go to the planning part of a split."""
    if not 0.0 < train_fraction < 1.0:
        raise InputError(f"{source}: train_fraction must be in (0, 1), got {train_fraction}")
    if num_steps < 2:
        raise InputError(
            f"{source}: cannot split a trace of {num_steps} step into planning and held-out "
            "parts (needs >= 2 steps; give a step array or `tokens_per_step`)", mentions=("tokens_per_step",)
        )
    return int(min(max(round(num_steps * train_fraction), 1), num_steps - 1))


def _sequences(
    seq_id: np.ndarray | None, pos: np.ndarray | None, T: int, source: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Checked ``seq_id`` and ``pos`` (int64 [T] or None; see :class:`Trace`)."""
    if seq_id is None:
        if pos is not None:
            raise InputError(f"{source}: pos needs seq_id (a position is within a sequence)")
        return None, None
    out = []
    for name, arr in (("seq_id", seq_id), ("pos", pos)):
        if arr is None:
            out.append(None)
            continue
        a = np.asarray(arr)
        if a.shape != (T,):
            raise InputError(f"{source}: {name} must have shape [tokens] = ({T},), got {a.shape}")
        a = _as_int64(a, name, source)
        if (a < 0).any():
            i = int(np.argmax(a < 0))
            raise InputError(f"{source}: {name} must be >= 0 (found {int(a[i])} at token {i})")
        out.append(a)
    sid, p = out
    if p is not None and T > 1:
        order = np.argsort(sid, kind="stable")
        same = sid[order][1:] == sid[order][:-1]
        bad = same & (p[order][1:] <= p[order][:-1])
        if bad.any():
            j = int(np.argmax(bad))
            t = int(order[j + 1])
            raise InputError(
                f"{source}: pos must increase within a sequence in trace order (token {t} of sequence "
                f"{int(sid[t])} has pos {int(p[t])} after pos {int(p[order[j]])})"
            )
    return sid, p


class Trace:
    """Per-token routing of T tokens through L MoE layers.

    Arrays (shape suffix in brackets):

    - ``topk_ids`` int32 [L, T, k]: logical expert ids token t chose at MoE layer l; token t is
      the same token in every layer. Stored as int32 whatever the input's integer dtype.
      -1 (:data:`NULL_EXPERT`) in any column = no expert (k is the most experts a token uses).
    - ``topk_weights`` float [L, T, k] or None: gate weights, finite and >= 0 (a null choice's
      weight is ignored).
    - ``step`` int64 [T]: step (batch) each token belongs to, non-decreasing. If not given:
      blocks of ``tokens_per_step`` tokens, or one single step when that is None too.
    - ``source_rank`` int64 [T] or None: data-parallel rank a token starts on (>= 0).
    - ``seq_id`` int64 [T] or None: the request (sequence) a token belongs to (>= 0).
    - ``pos`` int64 [T] or None: the token's position in its sequence (>= 0; 0 = first token);
      needs ``seq_id``, and a sequence's positions increase in trace order.

    With sequences, a workload forms the steps (:mod:`planner.traces.steps`); the file's ``step``
    is what it was recorded with.

    ``num_experts`` is E (ids lie in [-1, E)); ``model`` an optional model name; ``source``
    the file or label used in error messages.
    """

    has_tokens = True

    def __init__(
        self,
        topk_ids: np.ndarray,
        num_experts: int,
        *,
        topk_weights: np.ndarray | None = None,
        step: np.ndarray | None = None,
        source_rank: np.ndarray | None = None,
        model: str | None = None,
        tokens_per_step: int | None = None,
        source: str = "trace",
        seq_id: np.ndarray | None = None,
        pos: np.ndarray | None = None,
    ) -> None:
        self.source = source
        ids = np.asarray(topk_ids)
        if ids.ndim != 3:
            raise InputError(f"{source}: topk_ids must have shape [layers, tokens, top_k], got {ids.shape}")
        _require_int(ids, "topk_ids", source)
        L, T, k = ids.shape
        if L == 0 or T == 0 or k == 0:
            raise InputError(f"{source}: topk_ids must have at least one layer, token and choice, got shape {ids.shape}")
        num_experts = int(num_experts)
        _check_num_experts(num_experts, source)
        check_ids_range(ids, num_experts, source)  # before top_k: a bad id is the real problem
        if k > num_experts:
            raise InputError(f"{source}: top_k ({k}) must be <= num_experts ({num_experts})")
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if k > 1:
            srt = np.sort(ids, axis=-1)
            dup = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)  # -1 may repeat
            if dup.any():
                layer, token, j = (int(x[0]) for x in np.nonzero(dup))
                raise InputError(
                    f"{source}: topk_ids must not repeat an expert in one token's top-k "
                    f"(expert {int(srt[layer, token, j])} twice for token {token} at layer {layer})"
                )
        self.topk_ids = ids
        self.num_experts = num_experts
        self.model = None if model is None else str(model)

        self.topk_weights: np.ndarray | None = None
        if topk_weights is not None:
            w = np.asarray(topk_weights)
            if w.shape != ids.shape:
                raise InputError(f"{source}: topk_weights must have the shape of topk_ids {ids.shape}, got {w.shape}")
            if not np.issubdtype(w.dtype, np.floating):
                raise InputError(f"{source}: topk_weights must hold floats, got dtype {w.dtype}")
            if not np.isfinite(w).all():
                layer = int(np.argmax(~np.isfinite(w).reshape(L, -1).all(axis=1)))
                raise InputError(f"{source}: topk_weights must be finite (found NaN or inf at layer {layer})")
            if (w < 0).any():
                layer = int(np.argmax((w < 0).reshape(L, -1).any(axis=1)))
                value = float(w[layer][w[layer] < 0][0])
                raise InputError(f"{source}: topk_weights must be >= 0 (found {value:g} at layer {layer})")
            self.topk_weights = np.ascontiguousarray(w)

        if step is None:
            if tokens_per_step is None:
                step = np.zeros(T, dtype=np.int64)
            else:
                if int(tokens_per_step) <= 0:
                    raise InputError(f"{source}: tokens_per_step must be > 0 (got {tokens_per_step})")
                step = np.arange(T, dtype=np.int64) // int(tokens_per_step)
        st = np.asarray(step)
        if st.shape != (T,):
            raise InputError(f"{source}: step must have shape [tokens] = ({T},), got {st.shape}")
        st = _as_int64(st, "step", source)
        if T > 1:
            dec = np.diff(st) < 0
            if dec.any():
                i = int(np.argmax(dec))
                raise InputError(
                    f"{source}: step must be non-decreasing (token {i + 1} has step {int(st[i + 1])} "
                    f"after step {int(st[i])})"
                )
        self.step = st

        self.source_rank: np.ndarray | None = None
        if source_rank is not None:
            r = np.asarray(source_rank)
            if r.shape != (T,):
                raise InputError(f"{source}: source_rank must have shape [tokens] = ({T},), got {r.shape}")
            r = _as_int64(r, "source_rank", source)
            if (r < 0).any():
                i = int(np.argmax(r < 0))
                raise InputError(f"{source}: source_rank must be >= 0 (found {int(r[i])} at token {i})")
            self.source_rank = r
        self.seq_id, self.pos = _sequences(seq_id, pos, T, source)

        # Steps are contiguous runs of equal values (step is non-decreasing).
        self._steps, self._step_pos = np.unique(self.step, return_inverse=True)

    # ---- shape --------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return self.topk_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.topk_ids.shape[1]

    @property
    def top_k(self) -> int:
        return self.topk_ids.shape[2]

    @property
    def num_steps(self) -> int:
        return int(self._steps.size)

    @property
    def has_sequences(self) -> bool:
        """Whether tokens carry their request (``seq_id``): steps can then be formed by a workload."""
        return self.seq_id is not None

    @property
    def steps(self) -> np.ndarray:
        """Distinct step ids [S], ascending."""
        return self._steps

    @property
    def step_index(self) -> np.ndarray:
        """Position (0..S-1) of each token's step [T]."""
        return self._step_pos

    def __repr__(self) -> str:
        return (
            f"Trace(model={self.model!r}, layers={self.num_layers}, tokens={self.num_tokens}, "
            f"top_k={self.top_k}, experts={self.num_experts}, steps={self.num_steps})"
        )

    # ---- selections ---------------------------------------------------------------------

    def take(
        self, index: np.ndarray, *, step: np.ndarray | None = None, source_rank: np.ndarray | None = None,
        seq_id: np.ndarray | None = None,
    ) -> Trace:
        """The tokens ``index`` selects (integer positions [T'] in the order given, or a boolean
        mask [T]) with every per-token array (weights, ranks, sequences) kept; ``step``,
        ``source_rank`` and ``seq_id`` [T'] replace the selected ones when given (a new step
        layout; requests renumbered)."""
        def sel(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return Trace(
            self.topk_ids[:, index], self.num_experts, topk_weights=None if self.topk_weights is None else
            self.topk_weights[:, index], step=self.step[index] if step is None else step,
            source_rank=sel(self.source_rank) if source_rank is None else source_rank, model=self.model,
            source=self.source, seq_id=sel(self.seq_id) if seq_id is None else seq_id, pos=sel(self.pos),
        )

    def _take_tokens(self, token_mask: np.ndarray) -> Trace:
        if not token_mask.any():
            raise InputError(f"{self.source}: the step selection holds no tokens")
        return self.take(token_mask)

    def select_steps(self, selector: StepSelector) -> Trace:
        """The tokens of some steps: ``selector`` is a slice or integer positions over the S
        steps, or a boolean mask [S]. Step ids are kept."""
        mask = _step_mask(selector, self.num_steps, self.source)
        return self._take_tokens(mask[self._step_pos])

    def split(self, train_fraction: float = 0.5) -> tuple[Trace, Trace]:
        """(first steps, later held-out steps): plan on the first part, evaluate on the second.

        The first part holds ``round(S * train_fraction)`` steps, at least one and at most S-1.
        """
        n = _split_count(self.num_steps, train_fraction, self.source)
        return self.select_steps(slice(0, n)), self.select_steps(slice(n, None))

    # ---- counts -------------------------------------------------------------------------

    @property
    def valid(self) -> np.ndarray:
        """bool [L, T, k]: the choices that name an expert (not -1, :data:`NULL_EXPERT`)."""
        return self.topk_ids >= 0

    @property
    def has_nulls(self) -> bool:
        """Whether some choice is -1 (a token used fewer than k experts)."""
        return bool((self.topk_ids < 0).any())

    def refuse_nulls(self, what: str) -> None:
        """One-line error for a consumer that runs exactly k experts per token (``what`` names it):
        validation executes real MoE layers and does not run null choices yet."""
        if self.has_nulls:
            raise InputError(
                f"{what}: {self.null_fraction() * 100:.1f}% of topk_ids are -1 (no expert); it runs exactly top_k "
                "experts per token and does not execute null choices yet",
                mentions=("trace",),
            )

    def null_fraction(self) -> float:
        """Share of the L·T·k choices that are -1 (no expert)."""
        return float((self.topk_ids < 0).mean())

    def counts(self) -> np.ndarray:
        """Tokens routed to each expert: int64 [L, E] (null choices skipped)."""
        return expert_counts(self.topk_ids, self.num_experts)

    def counts_per_step(self) -> np.ndarray:
        """Tokens routed to each expert in each step: int64 [S, L, E] (null choices skipped)."""
        return expert_counts(self.topk_ids, self.num_experts, self._step_pos, self.num_steps)

    def source_ranks(self, num_ranks: int) -> np.ndarray:
        """The data-parallel rank each token starts on: int64 [T].

        The trace's own ``source_rank`` when it has one (each must be < ``num_ranks``);
        otherwise each step's tokens are spread over the ranks in order, in equal contiguous
        blocks (block sizes differ by at most one token).
        """
        if num_ranks <= 0:
            raise InputError(f"{self.source}: num_ranks must be > 0 (got {num_ranks})")
        if self.source_rank is not None:
            top = int(self.source_rank.max())
            if top >= num_ranks:
                raise InputError(
                    f"{self.source}: source_rank values must be < the number of data-parallel "
                    f"ranks {num_ranks} (found {top})"
                )
            return self.source_rank
        starts = np.searchsorted(self.step, self._steps, side="left")
        sizes = np.diff(np.append(starts, self.num_tokens))
        pos = np.arange(self.num_tokens, dtype=np.int64) - np.repeat(starts, sizes)
        return pos * num_ranks // np.repeat(sizes, sizes)


class CountsTrace:
    """Counts-only routing statistics: ``counts_per_step`` int64 [S, L, E] (tokens routed to
    expert e at MoE layer l in step s). No per-token data: ``has_tokens`` is False."""

    has_tokens = False

    def __init__(
        self,
        counts_per_step: np.ndarray,
        num_experts: int | None = None,
        *,
        model: str | None = None,
        source: str = "trace",
    ) -> None:
        self.source = source
        c = np.asarray(counts_per_step)
        if c.ndim != 3:
            raise InputError(f"{source}: counts must have shape [steps, layers, experts], got {c.shape}")
        _require_int(c, "counts", source)
        S, L, E = c.shape
        if S == 0 or L == 0 or E == 0:
            raise InputError(f"{source}: counts must have at least one step, layer and expert, got shape {c.shape}")
        if num_experts is not None and int(num_experts) != E:
            raise InputError(f"{source}: counts has {E} experts per layer but num_experts is {int(num_experts)}")
        _check_num_experts(E, source)
        c = _as_int64(c, "counts", source)
        if (c < 0).any():
            layer = int(np.argmax((c < 0).any(axis=(0, 2))))
            raise InputError(f"{source}: counts must be >= 0 (found {int(c[:, layer].min())} at layer {layer})")
        self._counts = np.ascontiguousarray(c)
        self.num_experts = E
        self.model = None if model is None else str(model)

    @property
    def num_layers(self) -> int:
        return self._counts.shape[1]

    @property
    def num_steps(self) -> int:
        return self._counts.shape[0]

    @property
    def steps(self) -> np.ndarray:
        return np.arange(self.num_steps)

    def __repr__(self) -> str:
        return (
            f"CountsTrace(model={self.model!r}, steps={self.num_steps}, layers={self.num_layers}, "
            f"experts={self.num_experts})"
        )

    def counts(self) -> np.ndarray:
        """Tokens routed to each expert over all steps: int64 [L, E]."""
        return self._counts.sum(axis=0)

    def counts_per_step(self) -> np.ndarray:
        """int64 [S, L, E] (a copy)."""
        return self._counts.copy()

    def select_steps(self, selector: StepSelector) -> CountsTrace:
        mask = _step_mask(selector, self.num_steps, self.source)
        if not mask.any():
            raise InputError(f"{self.source}: the step selection holds no steps")
        return CountsTrace(self._counts[mask], model=self.model, source=self.source)

    def split(self, train_fraction: float = 0.5) -> tuple[CountsTrace, CountsTrace]:
        """(first steps, later held-out steps), as :meth:`Trace.split`."""
        n = _split_count(self.num_steps, train_fraction, self.source)
        return self.select_steps(slice(0, n)), self.select_steps(slice(n, None))


def check_against_model(trace: Trace | CountsTrace, model: ModelSpec, source: str | None = None) -> None:
    """Check that ``trace`` fits ``model``: MoE layers, experts per layer and (for per-token
    traces) top_k. Raises :class:`InputError` naming both numbers."""
    src = source or trace.source
    if trace.num_layers != model.num_moe_layers:
        raise InputError(
            f"{src}: trace has {trace.num_layers} MoE layers but model {model.name} has "
            f"{model.num_moe_layers}"
        )
    if trace.num_experts != model.num_experts:
        raise InputError(
            f"{src}: trace has {trace.num_experts} experts per layer but model {model.name} has "
            f"{model.num_experts}"
        )
    if trace.has_tokens and trace.top_k != model.top_k:  # type: ignore[union-attr]
        raise InputError(
            f"{src}: trace has top_k {trace.top_k} but model {model.name} has top_k {model.top_k}"  # type: ignore[union-attr]
        )
