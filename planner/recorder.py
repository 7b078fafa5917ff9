"""``RoutingRecorder``: record a torch MoE model's routing while it trains or serves.

Hooks on each MoE block (its experts module's inputs, or its router's output:
:mod:`planner.recorder_hooks`) capture the top-k expert ids each token chose at each MoE layer; :meth:`RoutingRecorder.save` writes them as a docs/contracts.md routing trace
(``topk_ids`` [L, T, k], ``step`` [T], optional ``topk_weights`` and ``source_rank``) that
:func:`planner.load_trace` and ``moe-planner plan --trace`` read, :meth:`~RoutingRecorder.counts`
gives per-expert counts [L, E], and ``rebalance_every=N`` re-places the experts with
:func:`planner.rebalance` from the counts of the last N steps.

torch is imported only when a recorder is made (``import planner`` does not import it).

Routers are found by :func:`~planner.recorder_hooks.find_routers` (the Hugging Face MoE blocks
it knows are listed there; a block that cannot be read is an error when the recorder is made,
and a first forward that reaches none of the hooks is an error at that forward). Any other router is hooked by naming it: ``routers=[...]`` takes module names or modules
whose output is, or contains, an integer tensor of top-k ids (a float tensor [T, E] of logits is
taken as softmax routing with ``top_k``).

Dynamic top-k: an id outside [0, ``num_experts``) is recorded as -1, no expert (weight 0), the
trace contract's null choice. So an AdaMoE router (arXiv:2406.13233: top-k over E real plus n
null experts) is recorded by passing the real E as ``num_experts``; a router that marks unused
choices with a negative id (threshold routing) is recorded as it is.

Overhead (``benchmarks/recorder.py``): a hook does a ``topk`` on the logits when the router
returns only logits, a dtype cast to int16/int32 and a list append of a device tensor; no
GPU→CPU copy and no synchronisation happens in a hook. At the end of a step the step's ids are
concatenated on the device and counted with one ``index_add_``; they are copied to the host
every ``sync_every`` steps (and on :meth:`save`/:meth:`counts`).

A step is one forward pass of the model (``auto_step=True``), or whatever the caller marks with
:meth:`step` (gradient accumulation: call it after the optimizer step).

Sequences (the trace's ``seq_id`` / ``pos``, what lets a workload form its own steps,
:mod:`planner.traces.steps`): with ``record_sequences=True`` (default) a forward whose first
argument (or ``input_ids``) is an integer tensor [B, S] marks its B·S tokens as B new sequences
at positions 0..S-1, except that a one-token forward [B, 1] right after a forward of the same B
continues those B sequences one position further (Hugging Face ``generate``: a prompt pass, then
one token per step). Only shapes are read (no device synchronisation). Anything else (continuous
batching, packed inputs): call :meth:`mark_sequences` with the forward's ``seq_id`` and ``pos``.
Sequences are written only when every step has them. Activation
checkpointing runs the forward twice: record outside it, or detach the recorder during the
recomputation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import InputError
from planner.recorder_hooks import (
    RouterHook,
    deepseek_topk,
    find_routers,
    named_routers,
    read_experts_args,
    read_router_output,
)
from planner.solve.rebalance import rebalance
from planner.traces import CountsTrace, Trace, save_trace

__all__ = ["RouterHook", "RoutingRecorder", "deepseek_topk", "find_routers", "named_routers"]

class RoutingRecorder:
    """Record the top-k expert ids of every MoE layer of a torch model, step by step.

    ``model``: a ``torch.nn.Module``. ``routers``: None to find the routers of the Hugging Face
    MoE blocks (:func:`find_routers`), or module names / modules to hook. ``top_k`` and
    ``num_experts`` fill in what a router does not say. ``record_weights`` keeps the gate
    weights too (float32: what the experts multiply by, :mod:`planner.recorder_hooks`). ``keep_ids=False`` keeps per-step counts only (bounded memory for
    long runs: :meth:`save` then writes a counts-only trace). ``rebalance_every=N`` calls
    :func:`planner.rebalance` every N steps with the counts of those steps on ``num_gpus``
    GPUs of ``num_nodes`` nodes with ``num_redundant`` extra slots (``num_groups``,
    ``migration_weight`` as there), keeps the placement in :attr:`placement` and calls
    ``on_rebalance(placement [L, E + R], counts [L, E], step)``. ``source_rank``: this
    process's data-parallel rank, written as the trace's ``source_rank``.

    Use as a context manager, or call :meth:`detach` to remove the hooks (:meth:`attach` puts
    them back; the recording continues).
    """

    def __init__(
        self,
        model: Any,
        *,
        routers: Iterable[Any] | None = None,
        top_k: int | None = None,
        num_experts: int | None = None,
        record_weights: bool = False,
        keep_ids: bool = True,
        auto_step: bool = True,
        sync_every: int = 64,
        rebalance_every: int | None = None,
        num_gpus: int | None = None,
        num_nodes: int = 1,
        num_redundant: int = 0,
        num_groups: int | None = None,
        migration_weight: float = 0.0,
        on_rebalance: Callable[[np.ndarray, np.ndarray, int], Any] | None = None,
        source_rank: int | None = None,
        model_name: str | None = None,
        record_sequences: bool = True,
    ) -> None:
        try:
            import torch
        except ImportError:
            raise InputError("RoutingRecorder needs torch (pip install 'moe-planner[torch]')") from None
        self._torch = torch
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"RoutingRecorder: model must be a torch.nn.Module, got {type(model).__name__}")
        if rebalance_every is not None:
            if rebalance_every <= 0:
                raise InputError(f"RoutingRecorder: rebalance_every must be >= 1 (got {rebalance_every})")
            if num_gpus is None:
                raise InputError("RoutingRecorder: rebalance_every needs num_gpus (the GPUs to place experts on)")
        if sync_every <= 0:
            raise InputError(f"RoutingRecorder: sync_every must be >= 1 (got {sync_every})")
        if source_rank is not None and source_rank < 0:
            raise InputError(f"RoutingRecorder: source_rank must be >= 0 (got {source_rank})")
        self.model = model
        self.record_weights = record_weights
        self.keep_ids = keep_ids
        self.sync_every = sync_every
        self.rebalance_every = rebalance_every
        self.rebalance_args = {"num_gpus": num_gpus, "num_nodes": num_nodes, "num_redundant": num_redundant,
                               "num_groups": num_groups, "migration_weight": migration_weight}
        self.on_rebalance = on_rebalance
        self.source_rank = source_rank
        self.model_name = model_name
        self.hooks = named_routers(model, routers, top_k, num_experts) if routers is not None else find_routers(model)
        if not self.hooks:
            raise InputError(
                "RoutingRecorder: found no router in the model (no module with 'gate' and 'experts'); "
                "name the router modules with routers=[...]"
            )
        for h in self.hooks:
            if h.top_k is None and top_k is not None:
                h.top_k = top_k
            if h.num_experts is None and num_experts is not None:
                h.num_experts = num_experts
        self.num_steps = 0
        self._seen_experts = 0
        self.placement: np.ndarray | None = None  #: the last placement rebalance returned [L, E + R]
        self.rebalances: list[int] = []  #: steps at which rebalance ran
        self._step_tokens: list[int] = []  # tokens of each closed step
        self.record_sequences = record_sequences
        self._open_seq: list[tuple[np.ndarray, np.ndarray]] = []  # (seq_id, pos) marks of the open step
        self._step_seq: list[tuple[np.ndarray, np.ndarray] | None] = []  # per closed step
        self._next_seq = 0  # the next new sequence id
        self._last_rows: tuple[np.ndarray, np.ndarray] | None = None  # (seq ids, last pos) of the last [B, S] forward
        self._pre = None
        self._dev_ids: list[Any] = []  # closed steps not yet copied: [L, T_s, k] device tensors
        self._dev_w: list[Any] = []
        self._dev_counts: list[Any] = []  # [L, E] device tensors per closed step
        self._host_ids: list[np.ndarray] = []
        self._host_w: list[np.ndarray] = []
        self._host_counts: list[np.ndarray] = []
        self._window_start = 0
        self._enabled = True
        self.auto_step = auto_step
        self._root = None
        self.attach()

    # ---- hooks -----------------------------------------------------------------------------

    def _hook_for(self, h: RouterHook) -> Callable[..., None]:
        torch = self._torch

        def keep(ids: Any, w: Any) -> None:
            k = ids.shape[-1]
            if h.top_k is None:
                h.top_k = k
            ids = ids.reshape(-1, k).to(self._id_dtype(h))
            null = None
            if h.num_experts is not None:  # AdaMoE null experts (ids >= E) and ids < 0: no expert, -1
                null = (ids < 0) | (ids >= h.num_experts)
                ids = ids.masked_fill(null, -1)
            h.ids.append(ids)
            if self.record_weights and w is not None:
                w = w.reshape(-1, k).to(torch.float32)
                h.weights.append(w if null is None else w.masked_fill(null, 0.0))

        def on_output(module: Any, args: Any, output: Any) -> None:
            if self._enabled:
                with torch.no_grad():
                    keep(*read_router_output(h, output, self.record_weights))

        def on_experts(module: Any, args: Any, kwargs: Any) -> None:
            if self._enabled:
                with torch.no_grad():
                    keep(*read_experts_args(h, args, kwargs))

        return on_experts if h.point == "experts" else on_output

    def _id_dtype(self, h: RouterHook) -> Any:
        return self._torch.int16 if (h.num_experts or 2**31) <= 32767 else self._torch.int32

    def _before_forward(self, module: Any, args: Any, kwargs: Any) -> None:
        """Sequence marks from the shape of the forward's integer input [B, S] (module docstring)."""
        if not self._enabled:
            return
        x = args[0] if args else kwargs.get("input_ids")
        torch = self._torch
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.is_floating_point():
            return
        B, S = (int(n) for n in x.shape)
        last = self._last_rows
        if S == 1 and last is not None and last[0].size == B:
            seq, pos = last[0], last[1] + 1
            self._last_rows = (seq, pos)
            self.mark_sequences(seq, pos)
            return
        seq = np.arange(self._next_seq, self._next_seq + B, dtype=np.int64)
        self._next_seq += B
        self._last_rows = (seq, np.full(B, S - 1, dtype=np.int64))
        self.mark_sequences(np.repeat(seq, S), np.tile(np.arange(S, dtype=np.int64), B))

    def mark_sequences(self, seq_id: Any, pos: Any = None) -> None:
        """Say which request (``seq_id``) and position (``pos``) each token of the next forward
        belongs to, in the order the routers see the tokens (flattened batch). Marks add up over
        the forwards of a step; at the end of the step they must cover its tokens exactly."""
        sid = np.asarray(seq_id, dtype=np.int64).reshape(-1)
        p = np.zeros_like(sid) if pos is None else np.asarray(pos, dtype=np.int64).reshape(-1)
        if p.shape != sid.shape:
            raise InputError(f"RoutingRecorder: pos has {p.size} tokens but seq_id has {sid.size}")
        self._open_seq.append((sid, p))

    def _take_sequences(self, tokens: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The open step's sequence marks (None: unmarked), checked against its token count; a
        mismatch drops the step's routing and marks and raises."""
        if not self._open_seq:
            return None
        sid = np.concatenate([a for a, _ in self._open_seq])
        pos = np.concatenate([b for _, b in self._open_seq])
        self._open_seq.clear()
        if sid.size != tokens:
            self._drop_open()
            raise InputError(
                f"RoutingRecorder: the sequence marks of step {self.num_steps} cover {sid.size} tokens but its "
                f"routers saw {tokens}; mark every token (mark_sequences) or pass record_sequences=False"
            )
        return sid, pos

    def _drop_open(self) -> None:
        """Forget what the routers returned since the last closed step."""
        for h in self.hooks:
            h.ids.clear()
            h.weights.clear()

    def _sequence_arrays(self) -> dict[str, np.ndarray]:
        """``seq_id`` / ``pos`` for the trace when every closed step has them, else none."""
        if not self._step_seq or any(m is None for m in self._step_seq):
            return {}
        marks = [m for m in self._step_seq if m is not None]
        return {"seq_id": np.concatenate([a for a, _ in marks]), "pos": np.concatenate([b for _, b in marks])}

    def _after_forward(self, module: Any, args: Any, output: Any) -> None:
        if not self._enabled:
            return
        if any(h.ids for h in self.hooks):
            self.step()
        elif self.num_steps == 0:  # the first forward reached no hook: say so now, not at save
            self._open_seq.clear()
            raise InputError(
                f"RoutingRecorder: the model ran a forward pass but none of its {len(self.hooks)} hooked MoE "
                f"layers ({self.hooks[0].name}, ...) saw a token; name the modules that route with routers=[...]"
            )

    # ---- steps -----------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.hooks)

    @property
    def num_experts(self) -> int:
        """E: from the routers (their weight or config), or the largest id seen + 1."""
        known = [h.num_experts for h in self.hooks if h.num_experts is not None]
        if known:
            return max(known)
        if not self._seen_experts:
            raise InputError("RoutingRecorder: the number of experts is not known yet; pass num_experts=")
        return self._seen_experts

    def step(self) -> None:
        """Close the current step: what the routers returned since the last step is one step."""
        torch = self._torch
        if not any(h.ids for h in self.hooks):
            return
        per_layer = [torch.cat(h.ids) if h.ids else None for h in self.hooks]
        sizes = [0 if t is None else int(t.shape[0]) for t in per_layer]
        if len(set(sizes)) != 1:
            worst = min(range(len(sizes)), key=lambda i: sizes[i])
            self._drop_open()
            raise InputError(
                f"RoutingRecorder: MoE layer {worst} ({self.hooks[worst].name}) saw {sizes[worst]} tokens in step "
                f"{self.num_steps}, layer 0 saw {sizes[0]}; every MoE layer must route the same tokens"
            )
        marks = self._take_sequences(sizes[0])
        ks = {int(t.shape[1]) for t in per_layer}
        if len(ks) != 1:
            raise InputError(f"RoutingRecorder: the MoE layers chose different top-k counts {sorted(ks)}")
        ids = torch.stack(per_layer)  # [L, T, k]
        if not any(h.num_experts for h in self.hooks):  # E unknown: the largest id so far + 1 (a sync)
            self._seen_experts = max(self._seen_experts, int(ids.max()) + 1)
        L, E = ids.shape[0], self.num_experts
        real = (ids >= 0).reshape(-1)  # -1: no expert, counted nowhere
        flat = (ids.long().clamp(min=0) + torch.arange(L, device=ids.device)[:, None, None] * E).reshape(-1)
        counts = torch.zeros(L * E, dtype=torch.int64, device=ids.device)
        counts.index_add_(0, flat, real.long())
        self._dev_counts.append(counts.view(L, E))
        if self.keep_ids:
            self._dev_ids.append(ids)
            if self.record_weights:
                ws = [torch.cat(h.weights) if h.weights else None for h in self.hooks]
                self._dev_w.append(None if any(w is None for w in ws) else torch.stack(ws))
        for h in self.hooks:
            h.ids.clear()
            h.weights.clear()
        self._step_tokens.append(sizes[0])
        self._step_seq.append(marks)
        self.num_steps += 1
        if len(self._dev_counts) >= self.sync_every:
            self._sync()
        if self.rebalance_every and self.num_steps - self._window_start >= self.rebalance_every:
            self._rebalance()

    def _sync(self) -> None:
        """Copy the closed steps from the device to host memory (one copy per kind)."""
        torch = self._torch
        if self._dev_counts:
            self._host_counts.append(torch.stack(self._dev_counts).cpu().numpy())
            self._dev_counts.clear()
        if self._dev_ids:
            self._host_ids.append(torch.cat(self._dev_ids, dim=1).cpu().numpy())
            self._dev_ids.clear()
        if self._dev_w:
            if all(w is not None for w in self._dev_w):
                self._host_w.append(torch.cat(self._dev_w, dim=1).cpu().numpy())
            else:
                self.record_weights = False
                self._host_w.clear()
            self._dev_w.clear()

    def counts_per_step(self) -> np.ndarray:
        """Tokens routed to each expert at each MoE layer in each recorded step: int64 [S, L, E]."""
        self._sync()
        if not self._host_counts:
            E = max([h.num_experts or 0 for h in self.hooks] + [self._seen_experts])
            return np.zeros((0, self.num_layers, E), np.int64)
        E = max(c.shape[2] for c in self._host_counts)
        return np.concatenate([np.pad(c, ((0, 0), (0, 0), (0, E - c.shape[2]))) for c in self._host_counts])

    def counts(self, last: int | None = None) -> np.ndarray:
        """Per-expert token counts [L, E] over every recorded step (or the ``last`` N steps)."""
        c = self.counts_per_step()
        if last is not None:
            c = c[-last:] if last > 0 else c[:0]
        return c.sum(axis=0)

    def _rebalance(self) -> None:
        counts = self.counts(last=self.num_steps - self._window_start)
        self._window_start = self.num_steps
        a = self.rebalance_args
        self.placement = rebalance(
            counts, a["num_gpus"], a["num_nodes"], a["num_redundant"], previous=self.placement,
            num_groups=a["num_groups"], migration_weight=a["migration_weight"],
        )
        self.rebalances.append(self.num_steps)
        if self.on_rebalance is not None:
            self.on_rebalance(self.placement, counts, self.num_steps)

    # ---- results ---------------------------------------------------------------------------

    def trace(self) -> Any:
        """The recording as a :class:`planner.traces.Trace` (or a ``CountsTrace`` with ``keep_ids=False``)."""
        self.step()
        if self.num_steps == 0:
            raise InputError("RoutingRecorder: nothing recorded yet (run a forward pass first)")
        if not self.keep_ids:
            return CountsTrace(self.counts_per_step(), model=self.model_name, source="RoutingRecorder")
        self._sync()
        ids = np.concatenate(self._host_ids, axis=1)
        step = np.repeat(np.arange(len(self._step_tokens), dtype=np.int64), self._step_tokens)
        w = np.concatenate(self._host_w, axis=1) if self.record_weights and self._host_w else None
        rank = None if self.source_rank is None else np.full(ids.shape[1], self.source_rank, dtype=np.int64)
        return Trace(ids, self.num_experts, topk_weights=w, step=step, source_rank=rank, model=self.model_name,
                     source="RoutingRecorder", **self._sequence_arrays())

    def save(self, path: str | Path) -> Path:
        """Write the recording as a ``.npz`` routing trace (docs/contracts.md), atomically; the path."""
        p = Path(path)
        save_trace(self.trace(), p)
        return p

    def reset(self) -> None:
        """Forget everything recorded (the hooks stay)."""
        for h in self.hooks:
            h.ids.clear()
            h.weights.clear()
        for lst in (self._dev_ids, self._dev_w, self._dev_counts, self._host_ids, self._host_w,
                    self._host_counts, self._step_tokens, self.rebalances, self._open_seq, self._step_seq):
            lst.clear()
        self.num_steps = 0
        self._window_start = 0
        self._next_seq = 0
        self._last_rows = None

    def pause(self) -> None:
        """Stop recording until :meth:`resume` (the hooks stay, and return at once)."""
        self._enabled = False

    def resume(self) -> None:
        self._enabled = True

    def attach(self) -> None:
        """Register the hooks (done on construction; again after :meth:`detach`)."""
        if self.auto_step and self._root is None:
            self._root = self.model.register_forward_hook(self._after_forward)
        if self.record_sequences and self._pre is None:
            self._pre = self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        for h in self.hooks:
            if h.handle is None:
                fn = self._hook_for(h)
                h.handle = (h.module.register_forward_pre_hook(fn, with_kwargs=True) if h.point == "experts"
                            else h.module.register_forward_hook(fn))

    def detach(self) -> None:
        """Remove every hook from the model (what was recorded stays; :meth:`attach` re-registers)."""
        for h in self.hooks:
            if h.handle is not None:
                h.handle.remove()
                h.handle = None
        if self._root is not None:
            self._root.remove()
            self._root = None
        if self._pre is not None:
            self._pre.remove()
            self._pre = None

    def __enter__(self) -> RoutingRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def __repr__(self) -> str:
        return (f"RoutingRecorder({self.num_layers} MoE layers, {self.num_steps} steps, "
                f"{sum(self._step_tokens)} tokens)")
