"""Steps formed by a workload from a trace's sequences (``seq_id`` / ``pos``).

A trace recorded per request (``seq_id`` and ``pos`` per token, :class:`~planner.traces.Trace`)
says which tokens belong together but not how a server batches them: that is the workload's.
Sequences arrive in the order of their first token in the file; a sequence's tokens are taken in
``pos`` order.

- :func:`prefill_steps` — each step holds whole prompts, in arrival order, up to ``token_budget``
  tokens across the cluster (SGLang ``--max-prefill-tokens``, vLLM
  ``--max-num-batched-tokens``). A prompt that does not fit the room left starts the next step;
  a prompt longer than the budget is cut into budget-sized chunks, one step each (chunked
  prefill), its last chunk opening a step the next prompts may join. With ``per_rank`` the
  budget is divided over the ranks, as SGLang does under ``--enable-dp-attention``
  (``chunked_prefill_size // dp_size``, sgl-project/sglang ``python/sglang/srt/server_args.py``):
  every rank keeps its own queue of the prompts dealt to it and takes ``token_budget // ranks``
  of its queue's tokens a step, so a long prompt is chunked over several steps on its rank
  instead of filling one step on one rank; steps in which fewer than half the ranks still have
  tokens (the drain at the end of a finite trace) are dropped.
- :func:`decode_steps` — ``batch`` concurrent sequences (slots); each step runs one token of every
  active sequence; when a sequence ends its slot takes the next waiting sequence at the next step.
  A teacher-forced trace routes token t as decoding it after the same prefix would, so every
  token is a decode token. A server at steady state keeps its batch full; a finite trace ends
  with a drain (slots idle once no sequence waits): steps in which fewer than half the slots are
  busy are dropped. A batch larger than the trace's sequences is cut to their number, or, with
  ``split`` (what a workload does, :func:`workload_steps`), each sequence is cut into
  consecutive parts of at most ``T // batch`` tokens (the steps the trace makes at that batch)
  decoded as requests of their own, so that every step holds the batch's tokens (a server's
  batch holds that many requests, each at its own position; parts of one request share its
  topic, so such steps are somewhat more skewed than steps of as many independent requests).

Ranks (data-parallel attention ranks, the ``source_rank`` a token starts on), ``deal``:

- ``"round-robin"``: the j-th sequence in arrival order goes to rank ``j mod ranks`` (SGLang's
  ``--load-balance-method round_robin``);
- ``"least-loaded"``: prefill — the prompt goes to the rank with the fewest tokens in the step so
  far; decode — the sequence takes the rank of the slot it fills (slots are dealt to ranks
  ``slot mod ranks``, so a rank's sequences are replaced on that rank: each rank keeps
  ``batch / ranks`` sequences, SGLang's ``shortest_queue`` in steady state). Ties: lowest rank.

Legend: T = tokens, N = sequences. The returned trace holds the same tokens (reordered: step,
then rank, then sequence, then position), with ``step`` and ``source_rank`` set and ``seq_id`` /
``pos`` kept.
"""

from __future__ import annotations

import heapq
from typing import Literal

import numpy as np

from planner.errors import InputError
from planner.specs.workload import Workload
from planner.traces.stream import StreamedTrace
from planner.traces.trace import Trace

Deal = Literal["round-robin", "least-loaded"]
DEALS: tuple[str, ...] = ("round-robin", "least-loaded")


def _check(trace: Trace, what: str, size: int, size_name: str, ranks: int, deal: str) -> None:
    if not trace.has_sequences:
        raise InputError(f"{trace.source}: {what} steps need seq_id (the request of each token) in the trace")
    if int(size) <= 0:
        raise InputError(f"{size_name} must be > 0 (got {size})", field=size_name)
    if int(ranks) <= 0:
        raise InputError(f"ranks must be > 0 (got {ranks})", field="ranks")
    if deal not in DEALS:
        raise InputError(f"deal must be one of {', '.join(DEALS)} (got {deal!r})", field="deal")


def sequences(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token order [T], sequence starts [N], sequence lengths [N]): ``order`` lists the tokens
    sequence by sequence in arrival order, each in ``pos`` order (file order when no ``pos``);
    sequence j holds ``order[starts[j]: starts[j] + lengths[j]]``."""
    sid = trace.seq_id
    assert sid is not None
    T = sid.size
    first = np.full(int(sid.max()) + 1, T, dtype=np.int64)
    np.minimum.at(first, sid, np.arange(T, dtype=np.int64))
    arrival = np.argsort(np.argsort(first, kind="stable"), kind="stable")  # rank of each id by first token
    within = trace.pos if trace.pos is not None else np.arange(T, dtype=np.int64)
    order = np.lexsort((within, arrival[sid]))
    lengths = np.bincount(arrival[sid], minlength=first.size)
    lengths = lengths[lengths > 0]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return order, starts, lengths.astype(np.int64)


def _build(
    trace: Trace, order: np.ndarray, step_T: np.ndarray, rank_T: np.ndarray, seq_T: np.ndarray | None = None
) -> Trace:
    """The trace's tokens ``order``-ed with their step and rank, sorted by (step, rank, order);
    ``seq_T`` renumbers their requests."""
    k = np.lexsort((np.arange(order.size), rank_T, step_T))
    return trace.take(order[k], step=step_T[k], source_rank=rank_T[k], seq_id=None if seq_T is None else seq_T[k])


def prefill_steps(
    trace: Trace, token_budget: int, ranks: int = 1, deal: Deal = "round-robin", per_rank: bool = False
) -> Trace:
    """Prefill steps of whole prompts up to ``token_budget`` tokens, or with ``per_rank`` of
    ``token_budget // ranks`` tokens from each rank's own queue (module docstring)."""
    _check(trace, "prefill", token_budget, "token_budget", ranks, deal)
    order, starts, lengths = sequences(trace)
    B, R = int(token_budget), int(ranks)
    if per_rank:
        return _per_rank_steps(trace, order, lengths, max(1, B // R), R, deal)
    step_T = np.empty(order.size, dtype=np.int64)
    rank_T = np.empty(order.size, dtype=np.int64)
    step, used = 0, 0
    load = np.zeros(R, dtype=np.int64)
    for j, (a, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        if used and used + n > B:  # does not fit the room left: next step
            step, used = step + 1, 0
            load[:] = 0
        r = j % R if deal == "round-robin" else int(np.argmin(load))
        rank_T[a: a + n] = r
        off = 0
        while off < n:  # chunks of a prompt longer than the room left (chunked prefill)
            take = min(n - off, B - used)
            step_T[a + off: a + off + take] = step
            load[r] += take
            used += take
            off += take
            if used >= B and (off < n or j + 1 < len(starts)):
                step, used = step + 1, 0
                load[:] = 0
    return _build(trace, order, step_T, rank_T)


def _per_rank_steps(trace: Trace, order: np.ndarray, lengths: np.ndarray, cap: int, R: int, deal: str) -> Trace:
    """:func:`prefill_steps` with ``per_rank``: prompts are dealt to ranks in arrival order (round
    robin, or to the rank with the fewest tokens dealt so far), and every step each rank takes
    the next ``cap`` tokens of its own queue, so the ``i``-th token of a rank's queue runs at step
    ``i // cap``; the drain at the end (fewer than half the ranks busy) is dropped."""
    N = lengths.size
    if deal == "round-robin":
        rank_N = np.arange(N, dtype=np.int64) % R
    else:
        rank_N, load = np.empty(N, dtype=np.int64), np.zeros(R, dtype=np.int64)
        for j, n in enumerate(lengths.tolist()):
            rank_N[j] = int(np.argmin(load))
            load[rank_N[j]] += n
    rank_T = np.repeat(rank_N, lengths)  # tokens in ``order``: sequence by sequence
    by_rank = np.argsort(rank_T, kind="stable")
    first_R = np.concatenate([[0], np.cumsum(np.bincount(rank_T, minlength=R))[:-1]])
    queue_T = np.empty(order.size, dtype=np.int64)
    queue_T[by_rank] = np.arange(order.size) - first_R[rank_T[by_rank]]
    step_T = queue_T // cap
    busy_S = np.bincount(np.unique(step_T * R + rank_T) // R)
    keep = busy_S[step_T] * 2 >= min(R, N)
    return _build(trace, order[keep], step_T[keep], rank_T[keep])


def decode_steps(trace: Trace, batch: int, ranks: int = 1, deal: Deal = "round-robin", split: bool = False) -> Trace:
    """Decode steps of ``batch`` concurrent sequences, one token each (module docstring)."""
    _check(trace, "decode", batch, "batch", ranks, deal)
    order, starts, lengths = sequences(trace)
    parted = split and int(batch) > starts.size
    if parted:  # the parts are requests of their own: seq_id numbers them
        starts, lengths = split_sequences(starts, lengths, part_length(order.size, int(batch)))
    R = int(ranks)
    batch = min(int(batch), int(starts.size))
    slots = [(0, s) for s in range(batch)]  # (step the slot is free from, slot)
    begin = np.empty(starts.size, dtype=np.int64)
    slot_of = np.empty(starts.size, dtype=np.int64)
    for j, n in enumerate(lengths.tolist()):
        free, s = heapq.heappop(slots)
        begin[j], slot_of[j] = free, s
        heapq.heappush(slots, (free + n, s))
    seq_T = np.repeat(np.arange(starts.size, dtype=np.int64), lengths)
    step_T = begin[seq_T] + (np.arange(order.size, dtype=np.int64) - starts[seq_T])
    rank_S = np.arange(starts.size, dtype=np.int64) % R if deal == "round-robin" else slot_of % R
    busy = np.bincount(step_T)
    keep = busy[step_T] * 2 >= batch  # the drain: fewer than half the slots busy (module docstring)
    return _build(trace, order[keep], step_T[keep], rank_S[seq_T][keep], seq_T[keep] if parted else None)


def part_length(tokens: int, batch: int) -> int:
    """Longest part when sequences are split for a decode batch (:func:`decode_steps`): the steps
    ``tokens`` make at ``batch``, so that a slot runs several parts one after another and stays
    busy until the trace's end."""
    return max(1, int(tokens) // max(1, int(batch)))


def parts_per_sequence(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """How many parts :func:`split_sequences` cuts each sequence of ``lengths`` into:
    ``ceil(length / max_len)``."""
    if max_len <= 0:
        raise InputError(f"max_len must be > 0 (got {max_len})", field="max_len")
    return -(-np.asarray(lengths) // int(max_len))


def split_sequences(starts: np.ndarray, lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence (``starts`` / ``lengths`` as :func:`sequences` gives them) cut into
    :func:`parts_per_sequence` consecutive parts of near-equal length, the longer first:
    (part starts, part lengths), parts of a sequence adjacent and in order."""
    p_N = parts_per_sequence(lengths, max_len)
    seq_P = np.repeat(np.arange(lengths.size), p_N)
    i_P = np.arange(seq_P.size) - np.repeat(np.cumsum(p_N) - p_N, p_N)  # index of a part in its sequence
    base, extra = (lengths // p_N)[seq_P], (lengths % p_N)[seq_P]
    part_len = base + (i_P < extra)
    part_start = starts[seq_P] + i_P * base + np.minimum(i_P, extra)
    return part_start.astype(np.int64), part_len.astype(np.int64)


#: Training token budget per step across the cluster when the workload gives none.
DEFAULT_STEP_TOKENS = 4096
#: Prefill token budget per step across the cluster (one engine) when the workload gives none:
#: SGLang's default ``--chunked-prefill-size`` on GPUs of 35-160 GiB (A100, H100, H200; 16384
#: above, 2048 below), a budget for the whole engine that DP attention divides over its ranks
#: (sgl-project/sglang, python/sglang/srt/server_args.py: ``chunked_prefill_size = 8192``,
#: ``chunked_prefill_size // dp_size`` under ``enable_dp_attention``).
CHUNKED_PREFILL_TOKENS = 8192
#: Concurrent decode sequences across the cluster when the workload gives none.
DEFAULT_DECODE_BATCH = 256
#: Fewest decode steps a trace with sequences is formed into: a batch larger than its tokens
#: allow is cut to ``tokens // MIN_DECODE_STEPS`` (planned on some, scored on the others).
MIN_DECODE_STEPS = 4
#: Steps drawn when a trace without sequences holds fewer tokens than one step of the workload.
RESAMPLED_STEPS = 4


def regroup_tokens(trace: Trace, step_tokens: int, ranks: int = 1, seed: int = 0) -> tuple[Trace, str]:
    """Steps of ``step_tokens`` tokens from a trace without sequences, and how they were formed:
    its tokens in file order, ``step_tokens`` at a time (the last, partial group dropped when
    there is more than one step), dealt round-robin to ``ranks`` within a step; a trace with
    fewer tokens than one step gives :data:`RESAMPLED_STEPS` steps of tokens drawn with
    replacement (``seed``). Routing of a token is kept whole (all its layers)."""
    if int(step_tokens) <= 0:
        raise InputError(f"step_tokens must be > 0 (got {step_tokens})", field="step_tokens")
    T, B = trace.num_tokens, int(step_tokens)
    if T >= B:
        S = T // B
        idx = np.arange(S * B, dtype=np.int64)
        how = (f"its {T} tokens regrouped in file order into {S} steps of {B}"
               + (f" ({T - S * B} left over dropped)" if T > S * B else ""))
    else:
        S = RESAMPLED_STEPS
        idx = np.sort(np.random.default_rng(seed).integers(0, T, size=S * B)) if T else np.zeros(0, np.int64)
        how = f"its {T} tokens are fewer than one step of {B}: {S} steps of {B} tokens drawn with replacement"
    within = np.tile(np.arange(B, dtype=np.int64), S)
    out = trace.take(idx, step=np.repeat(np.arange(S, dtype=np.int64), B), source_rank=within % max(1, int(ranks)))
    return out, how


def _step_size(workload: Workload) -> tuple[str, int, str]:
    """(kind, size, words): decode sequences in flight, or prefill / train tokens per step."""
    if workload.mode == "decode":
        b = workload.serving_batch or workload.tokens_per_step or DEFAULT_DECODE_BATCH
        return "decode", b, f"{b} concurrent sequences"
    if workload.mode == "prefill":
        b = workload.tokens_per_step or CHUNKED_PREFILL_TOKENS
        src = "" if workload.tokens_per_step else " (SGLang's default --chunked-prefill-size)"
        return "prefill", b, f"{b} tokens{src}"
    b = workload.tokens_per_step or (
        workload.global_batch * workload.seq_len if workload.global_batch is not None else DEFAULT_STEP_TOKENS
    )
    return "train", b, f"{b} tokens"


def workload_steps(
    trace: Trace, workload: Workload, ranks: int, seed: int = 0, regroup: bool = True
) -> tuple[Trace, str | None]:
    """The steps ``workload`` forms from ``trace``, and a note saying how (None, and the trace
    unchanged, when the mode is offload — offload forms its own decode steps).

    With sequences: ``prefill`` — :func:`prefill_steps` with the workload's ``tokens_per_step``,
    else :data:`CHUNKED_PREFILL_TOKENS` (SGLang's chunked prefill), divided over the ranks when
    its ``prefill_budget`` is ``per-rank``; ``train`` — the same with
    ``tokens_per_step``, else ``global_batch · seq_len``, else :data:`DEFAULT_STEP_TOKENS`;
    ``decode`` — :func:`decode_steps` with ``batch`` concurrent sequences (stated or found by
    the parallelism search), else ``tokens_per_step``, else :data:`DEFAULT_DECODE_BATCH`.
    Sequences are dealt round-robin to ``ranks`` data-parallel ranks (one per GPU: attention
    data parallelism, as DeepSeek-style serving runs it).

    Without sequences, a serving workload with a stated batch (decode) or token budget (prefill)
    has the trace's tokens regrouped to its step size (:func:`regroup_tokens`); otherwise (train,
    no batch, a batch the search found — said in the note —, or ``regroup`` false: tokens sampled
    from recorded per-step counts, whose steps the plan balances on) the file's steps are kept.
    A streamed trace keeps its file's steps.
    """
    if workload.mode == "offload":
        return trace, None
    if isinstance(trace, StreamedTrace):  # a sample of the file's steps: sequences are cut
        if trace.has_sequences:
            return trace, "a streamed trace keeps its file's steps (its sequences are only sampled)"
        return trace, None
    kind, size, words = _step_size(workload)
    if not trace.has_sequences:
        if trace.num_tokens == 0 or not regroup:
            return trace, None
        file_size = trace.num_tokens / max(1, trace.num_steps)
        stated = workload.serving_batch if kind == "decode" else workload.tokens_per_step if kind == "prefill" else None
        if kind == "decode" and workload.batch_searched:
            return trace, (f"the trace has no sequences: its file's steps ({file_size:.0f} tokens on average) are "
                           f"replayed, not the batch of {stated} found; state the batch (`batch`) to regroup its "
                           "tokens to it")
        if stated is None or abs(file_size - stated) < 0.5:  # a decode step holds one token of every sequence
            return trace, None
        out, how = regroup_tokens(trace, stated, ranks, seed)
        return out, (f"the trace has no sequences: {how} ({kind} steps of {words}; its file's steps held "
                     f"{file_size:.0f} tokens on average)")
    lengths = np.unique(trace.seq_id, return_counts=True)[1]  # tokens per sequence
    n_seq = int(lengths.size)
    if kind == "decode":
        # a batch the trace's sequences cannot fill: split them, but keep MIN_DECODE_STEPS steps
        room = max(n_seq, trace.num_tokens // MIN_DECODE_STEPS)
        run = min(size, room)
        out = decode_steps(trace, run, ranks, split=True)
        how = f"decode steps of {run} concurrent sequences (one token each; the drain at the end dropped)"
        if run > n_seq:
            longest = part_length(trace.num_tokens, run)
            n_req = int(parts_per_sequence(lengths, longest).sum())
            how += (f"; the batch {size} is larger than the trace's {n_seq} sequences: each is cut into parts of at "
                    f"most {longest} tokens decoded as requests of their own ({n_req} in all; parts of one request "
                    "share its topic, so these steps are somewhat more skewed than the batch's independent requests "
                    "would be)")
        if run < size:
            why = (f"its {trace.num_tokens} tokens make {MIN_DECODE_STEPS} steps" if room > n_seq
                   else f"the trace's {n_seq} sequences")
            how += f"; the batch {size} is cut to {run} ({why})"
    elif kind == "prefill" and workload.prefill_budget == "per-rank" and ranks > 1:
        cap = max(1, size // ranks)
        out = prefill_steps(trace, size, ranks, per_rank=True)
        how = (f"prefill steps of {words} divided over the ranks: each rank takes {cap} tokens of its own queue a step "
               "(a longer prompt chunked over steps; the drain at the end dropped)")
    else:
        out = prefill_steps(trace, size, ranks)
        how = f"{kind} steps of whole prompts up to {words}"
    return out, (
        f"steps formed from the trace's {n_seq} sequences: {how}, sequences dealt round-robin to {ranks} "
        f"data-parallel ranks ({out.num_steps} steps)"
    )
