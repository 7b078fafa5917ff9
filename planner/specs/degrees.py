"""The rules parallel degrees obey: one home for the plan schema, ``check``, the degree defaults
and the parallelism search.

Each rule is written once, in :func:`iter_degree_problems`, in the order the parallelism search
reports them (the first broken rule names a rejected candidate, so the order is part of the
search's output). The consumers differ only in how many problems they want:

- :class:`~planner.specs.plan.Plan` raises the first (``parallel: ...``);
- :func:`planner.check.check_plan` lists them all;
- :func:`planner.solve.degrees.resolve_degrees` raises the most basic one, with the valid values;
- :func:`planner.solve.parallel.rule_violation` rejects a candidate by the first.

The rules are the real systems' (Megatron-core, vLLM, SGLang): the degrees multiply to the GPUs;
tp divides the attention heads (and the KV heads for GQA); etp divides the expert FFN width; ep
divides the physical expert slots (every EP rank holds the same number); ep·etp divides the GPUs
of a pipeline stage (Megatron's expert-data-parallel rule); the layers split over the pp·vpp
virtual stages as Megatron-core can run them (:func:`pipeline_layout`: evenly, with
``--decoder-first/last-pipeline-num-layers``, or with ``--pipeline-model-parallel-layout``);
interleaving (vpp > 1) needs pp > 1 and micro-batches divisible by pp;
cp > 1 needs the sequence divisible by 2·cp; the global batch divides by dp·micro-batch. Keeping
TP (and, in training, EP·ETP) inside a node is the search's policy for the degrees it chooses,
asked for by the caller; a degree the user fixes is honoured across nodes.

Messages name fields (``ep``, ``global_batch``), never command-line flags.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from planner.errors import InputError
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class DegreeProblem:
    """One broken rule: its name (the search's ``rule_counts`` key), the field it is about and
    the message, which starts with that field when it can."""

    rule: str
    field: str
    message: str


@dataclass(frozen=True)
class Degrees:
    """The degrees a rule reads (the plan's :class:`~planner.specs.plan.Parallel` or a search
    candidate), plus the micro-batch of a training step."""

    dp: int
    tp: int
    pp: int
    ep: int
    etp: int = 1
    vpp: int = 1
    cp: int = 1
    micro_batch: int = 1
    pp_first: int | None = None  #: decoder layers of the first pipeline rank (None: Megatron's default split)
    pp_last: int | None = None  #: decoder layers of the last pipeline rank

    @classmethod
    def of(cls, par: object, micro_batch: int = 1) -> Degrees:
        """From any object with ``dp, tp, pp, ep, etp, vpp, cp`` attributes (and, optionally,
        ``pp_first`` / ``pp_last``)."""
        return cls(par.dp, par.tp, par.pp, par.ep, par.etp, par.vpp, par.cp, micro_batch,  # type: ignore[attr-defined]
                   getattr(par, "pp_first", None), getattr(par, "pp_last", None))


def iter_degree_problems(
    model: ModelSpec,
    cluster: ClusterSpec,
    d: Degrees,
    *,
    redundant: int | None = None,
    tp_in_node: bool = False,
    ep_in_node: bool = False,
    seq_len: int | None = None,
    global_batch: int | None = None,
) -> Iterator[DegreeProblem]:
    """Every rule ``d`` breaks, lazily, in the search's order (module docstring).

    ``redundant``: redundant expert slots; with it, ep must divide experts + redundant (a plan
    checks its slots through its placement instead). ``tp_in_node`` / ``ep_in_node``: keep TP /
    EP·ETP inside a node. ``seq_len`` and ``global_batch``: a training step's sequence and batch,
    for the cp and batch rules.
    """
    N, n = cluster.num_gpus, cluster.gpus_per_node
    L = model.num_layers
    att = model.attention
    if d.dp * d.tp * d.pp * d.cp != N:
        yield DegreeProblem("product", "dp", (
            f"dp × tp × pp × cp ({d.dp} × {d.tp} × {d.pp} × {d.cp} = {d.dp * d.tp * d.pp * d.cp}) must equal "
            f"the cluster's GPUs ({cluster.num_nodes} × {n} = {N})"
        ))
    if att.num_heads % d.tp or (att.kind == "gqa" and att.num_kv_heads % d.tp):
        yield DegreeProblem("tp-heads", "tp", (
            f"tp {d.tp} must divide the {att.num_heads} attention heads"
            + (f" and the {att.num_kv_heads} KV heads" if att.kind == "gqa" else "")
        ))
    if model.expert_intermediate_size % d.etp:
        yield DegreeProblem(
            "etp-width", "etp", f"etp ({d.etp}) must divide the expert FFN width ({model.expert_intermediate_size})"
        )
    if redundant is not None:
        slots = model.num_experts + redundant
        if slots % d.ep:
            what = f"{model.num_experts} experts" + (f" + {redundant} redundant" if redundant else "")
            yield DegreeProblem(
                "ep-experts", "ep", f"ep {d.ep} must divide the {what} (= {slots}): every EP rank holds the same number"
            )
    if tp_in_node and d.tp > n:
        yield DegreeProblem("tp-node", "tp", f"tp {d.tp} spans more than one node ({n} GPUs per node); TP stays on NVLink")
    if ep_in_node and d.ep * d.etp > n:
        yield DegreeProblem("ep-node", "ep", (
            f"ep × etp ({d.ep} × {d.etp} = {d.ep * d.etp}) spans more than one node ({n} GPUs per node); "
            "allow cross-node expert parallelism to search it"
        ))
    if N % d.pp:
        yield DegreeProblem("pp-gpus", "pp", f"pp ({d.pp}) must divide the cluster's {N} GPUs")
    elif (N // d.pp) % (d.ep * d.etp):
        yield DegreeProblem("edp", "ep", (
            f"ep × etp ({d.ep} × {d.etp} = {d.ep * d.etp}) must divide the {N // d.pp} GPUs of a pipeline stage"
            " (the experts of a stage shard over its GPUs: Megatron's expert-data-parallel rule)"
        ))
    layout = pipeline_layout(L, d.pp, d.vpp, mtp=model.mtp_layers, first=d.pp_first, last=d.pp_last)
    if isinstance(layout, str):
        rule = "vpp" if d.vpp > 1 and d.pp_first is None and d.pp_last is None else "pp-layers"
        yield DegreeProblem(rule, "pp" if "pp_first" not in layout else "pp_first", layout)
    if seq_len is not None and d.cp > 1 and seq_len % (2 * d.cp):
        yield DegreeProblem(
            "cp-seq", "cp", f"cp {d.cp} needs the sequence length {seq_len} divisible by 2 × cp = {2 * d.cp}"
        )
    if global_batch is not None:
        if global_batch % (d.dp * d.micro_batch):
            yield DegreeProblem("batch", "global_batch", (
                f"global batch {global_batch} must be a multiple of dp × micro-batch ({d.dp} × {d.micro_batch})"
            ))
        elif d.vpp > 1 and (global_batch // (d.dp * d.micro_batch)) % d.pp:
            mbs = global_batch // (d.dp * d.micro_batch)
            yield DegreeProblem("vpp", "vpp", f"interleaving needs micro-batches ({mbs}) divisible by pp ({d.pp})")


def degree_problems(model: ModelSpec, cluster: ClusterSpec, par: object, **rules: object) -> list[str]:
    """Every rule the degrees of ``par`` break, one message each (empty: none); ``rules`` as
    for :func:`iter_degree_problems`."""
    return [p.message for p in iter_degree_problems(model, cluster, Degrees.of(par), **rules)]  # type: ignore[arg-type]


def require_positive(**values: int | float | None) -> None:
    """InputError naming the first field given a value <= 0 (``None``: not given)."""
    for name, v in values.items():
        if v is not None and not isinstance(v, bool) and v <= 0:
            raise InputError(f"{name} must be > 0 (got {v})", field=name)


def require_redundant(redundant: int) -> None:
    """InputError unless the redundant expert slots are >= 0."""
    if redundant < 0:
        raise InputError(f"redundant_experts must be >= 0 (got {redundant})", field="redundant_experts")


# ---- pipeline layouts --------------------------------------------------------------------------

#: Pipeline units of the embedding and of the output head + loss when balancing an uneven split:
#: one decoder layer each, Megatron's ``--account-for-embedding-in-pipeline-split`` /
#: ``--account-for-loss-in-pipeline-split`` convention (megatron/training/arguments.py). An MTP
#: layer counts as one decoder layer (it is one: DeepSeek-V3 §2.2).
EMBEDDING_UNITS = 1
LOSS_UNITS = 1


@dataclass(frozen=True)
class PipelineLayout:
    """Decoder layers of every virtual pipeline stage, as Megatron-core runs them.

    ``chunks[c]`` is the decoder-layer count of virtual stage ``c`` in model order (chunk ``c``
    lives on pipeline rank ``c % pp``, Megatron's interleaved order); the embedding sits on
    chunk 0, the MTP layers (``mtp``) and the output head with the loss on the last chunk.
    ``kind``: ``even`` (every chunk ⌈L/(pp·vpp)⌉ = L/(pp·vpp) layers: no argument), ``first-last``
    (``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers``, the
    ``first`` / ``last`` layers of pipeline ranks 0 and pp − 1, every rank's layers split evenly
    over its vpp chunks) or ``layout`` (``--pipeline-model-parallel-layout``, any split).
    """

    pp: int
    vpp: int
    chunks: tuple[int, ...]
    mtp: int = 0
    kind: str = "even"
    first: int | None = None
    last: int | None = None

    def rank_ranges(self, rank: int) -> list[tuple[int, int]]:
        """(first layer, end) of each chunk of pipeline ``rank`` (0-based decoder layer indices)."""
        starts = [0]
        for n in self.chunks:
            starts.append(starts[-1] + n)
        return [(starts[c], starts[c + 1]) for c in range(rank, len(self.chunks), self.pp)]

    def rank_layers(self, rank: int) -> int:
        return sum(self.chunks[rank::self.pp])

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (frozen and small; the search asks again and again)
    def rank_counts(self, moe_layers: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """(MoE, dense) decoder layers of every pipeline rank, ``moe_layers`` the MoE layers' indices."""
        moe = set(moe_layers)
        out = []
        for r in range(self.pp):
            n_moe = sum(1 for lo, hi in self.rank_ranges(r) for i in range(lo, hi) if i in moe)
            out.append((n_moe, self.rank_layers(r) - n_moe))
        return tuple(out)

    def string(self) -> str:
        """Megatron's ``--pipeline-model-parallel-layout`` for these chunks ("E" embedding, "t"
        decoder layer, "m" MTP layer, "L" loss, "|" between virtual stages, ``x*n`` and
        ``(…)*n`` repeat; megatron/core/transformer/pipeline_parallel_layer_layout.py)."""
        last = len(self.chunks) - 1
        parts = []
        for c, n in enumerate(self.chunks):
            body = ("E" if c == 0 else "") + _rep("t", n) + (_rep("m", self.mtp) + "L" if c == last else "")
            parts.append(body)
        # compress runs of identical middle chunks: "(t*3|)*30"
        out: list[str] = []
        i = 0
        while i < len(parts):
            j = i
            while j + 1 < len(parts) and parts[j + 1] == parts[i]:
                j += 1
            run = j - i + 1
            if run > 2 and i > 0 and j < last:
                out.append(f"({parts[i]}|)*{run}")
                i = j + 1
                continue
            out.append(parts[i] + ("|" if i < last else ""))
            i += 1
        return "".join(out)

    def megatron_args(self) -> list[str]:
        """The Megatron-core arguments that set this layout (none when even, apart from vpp)."""
        out: list[str] = []
        if self.kind == "layout":
            return ["--pipeline-model-parallel-layout", self.string()]
        if self.kind == "first-last":
            if self.first is not None:
                out += ["--decoder-first-pipeline-num-layers", str(self.first)]
            if self.last is not None:
                out += ["--decoder-last-pipeline-num-layers", str(self.last)]
            if self.vpp > 1:
                out += ["--num-virtual-stages-per-pipeline-rank", str(self.vpp)]
            return out
        if self.vpp > 1:
            out += ["--num-layers-per-virtual-pipeline-stage", str(self.chunks[0])]
        return out

    def note(self) -> str | None:
        if self.kind == "even":
            return None
        ranks = [self.rank_layers(r) for r in range(self.pp)]
        what = (f"first {self.first}" if self.first is not None else "") + (
            (", " if self.first is not None and self.last is not None else "")
            + (f"last {self.last}" if self.last is not None else ""))
        how = (f"Megatron: {what} (--decoder-first/last-pipeline-num-layers)" if self.kind == "first-last"
               else f"Megatron: --pipeline-model-parallel-layout {self.string()}")
        return (f"uneven pipeline: decoder layers per pipeline rank {_ranks(ranks)}"
                + (f" (+{self.mtp} MTP on the last)" if self.mtp else "") + f"; {how}")


def _rep(ch: str, n: int) -> str:
    return "" if n <= 0 else ch if n == 1 else f"{ch}*{n}"


def _ranks(ranks: list[int]) -> str:
    if len(set(ranks[1:-1])) <= 1 and len(ranks) > 2:
        return f"{ranks[0]}, {ranks[1]} × {len(ranks) - 2}, {ranks[-1]}"
    return ", ".join(map(str, ranks))


def _first_last_problem(L: int, pp: int, vpp: int, first: int | None, last: int | None) -> str | None:
    """Megatron-core's rule for ``--decoder-first/last-pipeline-num-layers``
    (TransformerConfig.__post_init__, "Uneven PP"), as a message, or None when it holds."""
    mid_layers, mid_ranks = L, pp
    for name, n in (("pp_first", first), ("pp_last", last)):
        if n is None:
            continue
        if n <= 0:
            return f"{name} must be > 0 (got {n})"
        if vpp > 1 and n % vpp:
            return f"{name} ({n}) must be divisible by vpp ({vpp}): each virtual stage of the rank gets the same layers"
        mid_layers -= n
        mid_ranks -= 1
    if mid_ranks < 0 or mid_layers < 0 or bool(mid_layers) != bool(mid_ranks):
        return (f"pp_first/pp_last leave {mid_layers} layers for {max(mid_ranks, 0)} middle pipeline ranks "
                f"(the model has {L} layers over pp {pp})")
    if mid_ranks and mid_layers % mid_ranks:
        return f"the {mid_layers} middle layers must divide over the {mid_ranks} middle pipeline ranks"
    if mid_ranks and (mid_layers // mid_ranks) % vpp:
        return f"the {mid_layers // mid_ranks} layers of each middle pipeline rank must divide over vpp ({vpp})"
    return None


def _first_last_chunks(L: int, pp: int, vpp: int, first: int | None, last: int | None) -> tuple[int, ...]:
    ends = (first is not None) + (last is not None)
    mid = (L - (first or 0) - (last or 0)) // max(1, pp - ends) if pp - ends else 0
    per_rank = [mid] * pp
    if first is not None:
        per_rank[0] = first
    if last is not None:
        per_rank[-1] = last
    return tuple(per_rank[c % pp] // vpp for c in range(pp * vpp))


@functools.lru_cache(maxsize=4096)
def pipeline_layout(
    num_layers: int, pp: int, vpp: int = 1, *, mtp: int = 0, first: int | None = None, last: int | None = None,
) -> PipelineLayout | str:
    """The layout Megatron-core runs for ``num_layers`` decoder layers over ``pp`` ranks of ``vpp``
    virtual stages (``mtp`` MTP layers on the last), or the reason there is none.

    ``first`` / ``last`` given: those layers on the first / last pipeline rank, checked by
    Megatron's rule (:func:`_first_last_problem`). Otherwise: even when pp·vpp divides the
    layers; else the most balanced first/last split that Megatron's rule allows, counting the
    embedding, the head + loss and each MTP layer as one layer (:data:`EMBEDDING_UNITS`,
    :data:`LOSS_UNITS`; ties: the smaller first stage); else a ``--pipeline-model-parallel-layout``
    that spreads those units over the pp·vpp virtual stages as evenly as whole layers allow.
    """
    L, S = num_layers, pp * vpp
    if pp <= 0 or vpp <= 0:
        return f"pp and vpp must be > 0 (got {pp}, {vpp})"
    if vpp > 1 and pp == 1:
        return f"vpp {vpp} needs pp > 1"
    if first is not None or last is not None:
        if pp == 1:
            return "pp_first/pp_last need pp > 1"
        problem = _first_last_problem(L, pp, vpp, first, last)
        if problem:
            return problem
        return PipelineLayout(pp, vpp, _first_last_chunks(L, pp, vpp, first, last), mtp, "first-last", first, last)
    if S > L and vpp == 1:
        return f"pp ({pp}) must be <= the model's layers ({L})"
    if S > L:
        return f"pp × vpp ({pp} × {vpp} = {S}) must be <= the model's {L} layers (every virtual stage keeps a layer)"
    if L % S == 0:
        return PipelineLayout(pp, vpp, (L // S,) * S, mtp, "even")
    head = LOSS_UNITS + mtp

    def worst(f: int | None, z: int | None) -> tuple[int, int]:
        ch = _first_last_chunks(L, pp, vpp, f, z)
        units = [sum(ch[r::pp]) for r in range(pp)]
        units[0] += EMBEDDING_UNITS
        units[-1] += head
        return max(units), f or 0

    best: tuple[tuple[int, int], int | None, int | None] | None = None
    for f in [None, *range(vpp, L + 1, vpp)]:
        for z in [None, *range(vpp, L + 1, vpp)]:
            if (f is None and z is None) or _first_last_problem(L, pp, vpp, f, z):
                continue
            key = worst(f, z)
            if best is None or key < best[0]:
                best = (key, f, z)
    if best is not None:
        _, f, z = best
        return PipelineLayout(pp, vpp, _first_last_chunks(L, pp, vpp, f, z), mtp, "first-last", f, z)
    # a layout string: U units over S chunks, the extra ones to the middle chunks
    units = L + EMBEDDING_UNITS + head
    q, r = divmod(units, S)
    target = [q + (1 if 1 <= c <= r else 0) for c in range(S)]
    if r > S - 2:  # not enough middle chunks for the remainder: the last ones take it
        target = [q + (1 if c < r else 0) for c in range(S)]
    chunks = [target[c] - (EMBEDDING_UNITS if c == 0 else 0) - (head if c == S - 1 else 0) for c in range(S)]
    deficit = sum(max(0, -n) for n in chunks)
    chunks = [max(0, n) for n in chunks]
    c = 1
    while deficit > 0 and S > 2:  # the head side took more than its chunk holds: move layers off
        if chunks[c] > 0:
            chunks[c] -= 1
            deficit -= 1
        c = c % (S - 2) + 1
    return PipelineLayout(pp, vpp, tuple(chunks), mtp, "layout")
