"""The real MoE layer that validation executes: router, permute, grouped expert FFN, combine.

Shape legend (torchtitan / gpt-fast style: a tensor's name ends in its dimensions)::

    T   tokens in the batch                      D   hidden size (model width)
    E   routed experts of the layer              F   FFN width of one routed expert
    K   experts per token (top-k)                2F  gate and up projections stacked
    N   routed (token, choice) pairs = T·K       S   FFN width of the shared experts together
    G   expert groups (n_group)                  L   experts local to one EP rank
    P   physical slots of a placement            R   EP ranks

Weights are stored the ``nn.Linear`` way, ``[out, in]``: ``w13_E2FD`` [E, 2F, D] (gate rows
``[:F]``, up rows ``[F:]``) and ``w2_EDF`` [E, D, F]; products use their transposes
(``x_ND @ w13_E2FD[e].T``). This is the layout ``torch._grouped_mm`` accepts for its second
operand on Hopper (the layout the H100 measurement of 2026-11-23 found it runs:
``EfD_transposed``) and what torchtitan passes it.

Forward pass (:func:`moe_forward`):

1. **Router** (:func:`route`): softmax or sigmoid scores, optional selection bias and
   group-limited top-k (DeepSeek), weights from the unbiased scores.
2. **Permute** (:func:`permute`): the N = T·K pairs are sorted by expert (stable, so tokens keep
   their order inside an expert); ``x_ND = x_TD[token_N]`` (one ``index_select``);
   ``counts_E`` tokens per expert.
3. **Expert FFN** (:func:`experts_ffn`): each expert's SwiGLU FFN on its rows, as grouped GEMMs
   or a fallback backend; ``triton`` (opt-in) replaces steps 2-4 in :func:`moe_forward`.
4. **Combine** (:func:`combine`): ``out_TD[token_N] += weight_N · y_ND`` (``index_add_`` in
   float32, cast back to x's dtype).
5. **Shared experts**: every token also passes one FFN of width S (the shared experts fused
   into one MLP, as DeepSeek does); its output is added. (Qwen2-MoE's sigmoid gate on the shared
   expert is not modelled.)

One EP rank's share (:func:`run_local_experts`) is step 3 alone on the rank's L local experts:
rows already sorted by local expert with ``counts_L`` rows each. :func:`sharded_forward` runs a
whole layer as R such ranks in one process, tokens sent to physical slots of a placement (with
replicas), and must equal :func:`moe_forward` (checked in tests/kernels).

:func:`reference_moe` is the naive float64 reference the tests compare against: a Python loop
over tokens that routes each one by sorting its scores, with no permutation or grouped GEMM.

Torch is imported here; nothing in ``planner`` imports this module at import time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

Backend = Literal["auto", "grouped", "loop", "padded", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "grouped", "loop", "padded", "triton")


# ---- configuration and weights ---------------------------------------------------------------


@dataclass(frozen=True)
class MoEConfig:
    """Shape and routing rule of one MoE layer."""

    hidden: int
    """D, the model width."""
    ffn: int
    """F, FFN width of one routed expert."""
    num_experts: int
    """E, routed experts."""
    top_k: int
    """K, experts per token."""
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    """Router score function."""
    n_group: int | None = None
    """G, expert groups for group-limited routing (None: no groups)."""
    topk_group: int | None = None
    """Groups a token may choose experts from (with ``n_group``)."""
    group_score: Literal["max", "top2_sum"] = "max"
    """A group's score: its best expert (DeepSeek-V2) or its two best summed (DeepSeek-V3)."""
    norm_topk_prob: bool = True
    """Divide the K routing weights by their sum."""
    routed_scaling: float = 1.0
    """Factor on the routing weights (DeepSeek ``routed_scaling_factor``)."""
    shared_ffn: int = 0
    """S, total FFN width of the shared experts fused into one FFN (0: none)."""

    def __post_init__(self) -> None:
        for name in ("hidden", "ffn", "num_experts", "top_k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MoEConfig.{name} must be > 0 (got {getattr(self, name)})")
        if self.top_k > self.num_experts:
            raise ValueError(f"MoEConfig.top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        if self.scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"MoEConfig.scoring must be 'softmax' or 'sigmoid' (got {self.scoring!r})")
        if self.group_score not in ("max", "top2_sum"):
            raise ValueError(f"MoEConfig.group_score must be 'max' or 'top2_sum' (got {self.group_score!r})")
        if (self.n_group is None) != (self.topk_group is None):
            raise ValueError("MoEConfig.n_group and topk_group must be given together")
        if self.n_group is not None and self.topk_group is not None:
            if self.num_experts % self.n_group:
                raise ValueError(f"MoEConfig.n_group ({self.n_group}) must divide num_experts ({self.num_experts})")
            if not 0 < self.topk_group <= self.n_group:
                raise ValueError(f"MoEConfig.topk_group ({self.topk_group}) must be in [1, n_group = {self.n_group}]")
            per_group = self.num_experts // self.n_group
            if self.top_k > self.topk_group * per_group:
                raise ValueError(
                    f"MoEConfig.top_k ({self.top_k}) must be <= topk_group × experts per group "
                    f"({self.topk_group} × {per_group})"
                )
            if self.group_score == "top2_sum" and per_group < 2:
                raise ValueError("MoEConfig.group_score 'top2_sum' needs at least 2 experts per group")
        if self.shared_ffn < 0:
            raise ValueError(f"MoEConfig.shared_ffn must be >= 0 (got {self.shared_ffn})")

    @classmethod
    def from_model(cls, model: Any, *, ffn: int | None = None) -> MoEConfig:
        """The layer of a planner ``ModelSpec`` (read by attribute; ``ffn`` overrides F, e.g.
        F / etp for one expert-tensor-parallel shard)."""
        shared = 0
        if model.num_shared_experts:
            shared = model.shared_expert_intermediate_size or model.num_shared_experts * model.expert_intermediate_size
        return cls(
            hidden=model.hidden_size,
            ffn=ffn or model.expert_intermediate_size,
            num_experts=model.num_experts,
            top_k=model.top_k,
            scoring=model.scoring,
            n_group=model.n_group,
            topk_group=model.topk_group,
            group_score="top2_sum" if model.scoring == "sigmoid" and model.n_group else "max",
            shared_ffn=shared,
        )


@dataclass
class MoEWeights:
    """Parameters of one MoE layer (see the legend for layouts)."""

    router_ED: torch.Tensor
    w13_E2FD: torch.Tensor
    w2_EDF: torch.Tensor
    bias_E: torch.Tensor | None = None
    """Selection bias added to the scores before top-k (not to the weights); None: zero."""
    shared_w13_2SD: torch.Tensor | None = None
    shared_w2_DS: torch.Tensor | None = None


def init_weights(
    cfg: MoEConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    with_bias: bool = False,
) -> MoEWeights:
    """Random weights scaled by 1/sqrt(fan_in), so activations stay O(1) as in a trained layer
    (never zeros: zeros hide indexing errors and can time faster than real data)."""
    D, F_, E, S = cfg.hidden, cfg.ffn, cfg.num_experts, cfg.shared_ffn

    def rnd(*shape: int, fan_in: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=generator, device=device, dtype=torch.float32)
        return (t / math.sqrt(fan_in)).to(dtype)

    return MoEWeights(
        router_ED=rnd(E, D, fan_in=D),
        w13_E2FD=rnd(E, 2 * F_, D, fan_in=D),
        w2_EDF=rnd(E, D, F_, fan_in=F_),
        bias_E=rnd(E, fan_in=1).float() * 0.1 if with_bias else None,
        shared_w13_2SD=rnd(2 * S, D, fan_in=D) if S else None,
        shared_w2_DS=rnd(D, S, fan_in=S) if S else None,
    )


# ---- 1. router --------------------------------------------------------------------------------


def route(
    x_TD: torch.Tensor, router_ED: torch.Tensor, cfg: MoEConfig, bias_E: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing: ``(topk_ids_TK int64, topk_weights_TK float32+)``.

    In float32 at least (engines compute router logits in fp32):
    ``logits_TE = x_TD @ router_ED.T``; ``scores_TE = softmax(logits)`` or ``sigmoid(logits)``.
    Experts are *selected* on ``scores + bias_E`` (DeepSeek-V3's ``e_score_correction_bias``;
    zero when absent) and *weighted* by the unbiased scores.
    Group-limited top-k (DeepSeek ``n_group`` / ``topk_group``): the E experts form G groups of
    E/G; a group's score is its best expert's score (``group_score='max'``, DeepSeek-V2) or the
    sum of its two best (``'top2_sum'``, DeepSeek-V3); only experts of the ``topk_group`` best
    groups may be chosen. Then top-k. With ``norm_topk_prob`` the K weights are divided by their
    sum; finally they are multiplied by ``routed_scaling``.
    """
    acc = torch.promote_types(x_TD.dtype, torch.float32)
    logits_TE = x_TD.to(acc) @ router_ED.to(acc).t()
    scores_TE = logits_TE.softmax(dim=-1) if cfg.scoring == "softmax" else logits_TE.sigmoid()
    choice_TE = scores_TE if bias_E is None else scores_TE + bias_E.to(acc)
    if cfg.n_group is not None and cfg.topk_group is not None and cfg.topk_group < cfg.n_group:
        T, E, G = x_TD.shape[0], cfg.num_experts, cfg.n_group
        grouped_TGX = choice_TE.view(T, G, E // G)
        if cfg.group_score == "max":
            group_TG = grouped_TGX.amax(dim=-1)
        else:
            group_TG = grouped_TGX.topk(2, dim=-1).values.sum(dim=-1)
        keep_TG = torch.zeros_like(group_TG, dtype=torch.bool)
        keep_TG.scatter_(1, group_TG.topk(cfg.topk_group, dim=-1).indices, True)
        keep_TE = keep_TG.unsqueeze(-1).expand(T, G, E // G).reshape(T, E)
        choice_TE = choice_TE.masked_fill(~keep_TE, float("-inf"))
    topk_ids_TK = choice_TE.topk(cfg.top_k, dim=-1).indices
    weights_TK = scores_TE.gather(1, topk_ids_TK)
    if cfg.norm_topk_prob:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return topk_ids_TK, weights_TK * cfg.routed_scaling


# ---- 2. permute ------------------------------------------------------------------------------


def permute(
    x_TD: torch.Tensor, topk_ids_TK: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the (token, choice) pairs by expert.

    Returns ``(x_ND, order_N, counts_E)``: ``order_N`` indexes the flattened ``[T·K]`` pairs in
    expert order (stable), ``x_ND = x_TD[order_N // K]``, ``counts_E`` int64 rows per expert.
    """
    K = topk_ids_TK.shape[1]
    flat_N = topk_ids_TK.reshape(-1)
    order_N = torch.argsort(flat_N, stable=True)
    counts_E = torch.bincount(flat_N, minlength=num_experts)
    x_ND = x_TD.index_select(0, order_N // K)
    return x_ND, order_N, counts_E


# ---- 3. expert FFN ---------------------------------------------------------------------------


def _grouped_mm_available() -> bool:
    return hasattr(torch, "_grouped_mm")


def triton_unavailable(x: torch.Tensor) -> str | None:
    """Why the ``triton`` backend cannot run on ``x`` (None: it can). It needs the triton
    package and CUDA tensors, or CPU tensors with its kernels imported under TRITON_INTERPRET=1
    (Triton's interpreter; see kernels/triton_moe.py)."""
    try:
        from . import triton_moe
    except ImportError as exc:
        return f"triton does not import ({exc})"
    if x.dtype not in triton_moe.DTYPES:
        return f"its kernels take float16, bfloat16 or float32 (got {x.dtype})"
    if not (x.is_cuda or triton_moe.INTERPRETED):
        return (f"its kernels run on CUDA tensors (got a {x.device.type} tensor; on the CPU only under "
                "TRITON_INTERPRET=1 set before triton_moe is imported)")
    return None


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """``auto`` → ``grouped`` for CUDA bf16 inputs when ``torch._grouped_mm`` exists, else ``loop``.

    ``triton`` (kernels/triton_moe.py: fused gather + gate/up + SwiGLU and down + routing weight)
    is never chosen by ``auto``: it is not yet measured on a GPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if backend == "triton":
        why = triton_unavailable(x)
        if why is not None:
            raise RuntimeError(f"backend 'triton' is unavailable: {why}")
        return backend
    if backend == "auto":
        return "grouped" if (x.is_cuda and x.dtype == torch.bfloat16 and _grouped_mm_available()) else "loop"
    if backend == "grouped" and not _grouped_mm_available():
        raise RuntimeError(f"torch {torch.__version__} has no torch._grouped_mm; use backend 'loop' or 'padded'")
    return backend


def _swiglu(g_M2F: torch.Tensor, f: int) -> torch.Tensor:
    return F.silu(g_M2F[:, :f]) * g_M2F[:, f:]


def ffn(x_MD: torch.Tensor, w13_2FD: torch.Tensor, w2_DF: torch.Tensor) -> torch.Tensor:
    """One SwiGLU FFN: ``(SiLU(x Wg^T) · x Wu^T) W2^T`` (also the shared experts')."""
    return _swiglu(x_MD @ w13_2FD.t(), w2_DF.shape[1]) @ w2_DF.t()


def _counts_list(counts_E: torch.Tensor | Sequence[int]) -> list[int]:
    return [int(c) for c in (counts_E.tolist() if isinstance(counts_E, torch.Tensor) else counts_E)]


def experts_ffn(
    x_ND: torch.Tensor,
    counts_E: torch.Tensor | Sequence[int],
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
    backend: Backend | str = "auto",
) -> torch.Tensor:
    """SwiGLU FFN of each expert on its rows: ``x_ND`` sorted by expert, ``counts_E`` rows each.

    Returns ``y_ND`` (x's dtype). ``grouped`` issues two ``torch._grouped_mm`` and one
    elementwise SiLU·up regardless of E; ``loop`` issues five kernels per non-empty expert;
    ``padded`` copies rows into ``[E, max_count, D]`` and runs two batched matmuls;
    ``triton`` runs kernels/triton_moe.py's two fused kernels (SwiGLU in the first's epilogue).

    For each expert e on its rows,
    ``y = (SiLU(x @ W_gate.T) · (x @ W_up.T)) @ W2.T`` — as one grouped GEMM per projection
    (``torch._grouped_mm`` with cumulative row offsets), or a fallback: a Python loop of
    per-expert matmuls (``loop``), or one batched matmul over a zero-padded ``[E, max_count, D]``
    buffer (``padded``). With a single expert (L = 1 on an EP rank) every backend runs the plain
    dense FFN (two GEMMs): a grouped or padded kernel over one group only adds work.
    ``triton`` (kernels/triton_moe.py, opt-in, never chosen by ``auto``): two Triton kernels, the
    first gathering rows of x and applying SiLU·up in its epilogue; in :func:`moe_forward` it
    replaces steps 2-4 (permute fused into its loads, routing weight into its second epilogue).
    """
    E, twoF, D = w13_E2FD.shape
    f = twoF // 2
    assert w2_EDF.shape == (E, D, f), (w2_EDF.shape, (E, D, f))
    assert x_ND.ndim == 2 and x_ND.shape[1] == D, (x_ND.shape, D)
    be = resolve_backend(backend, x_ND)
    N = x_ND.shape[0]
    if E == 1:
        # One expert (an EP rank holding a single slot, Mixtral at EP 8): a plain dense FFN, two
        # ordinary GEMMs, whatever the backend; grouping or padding one group only adds work.
        if not isinstance(counts_E, torch.Tensor):
            assert sum(_counts_list(counts_E)) == N, (list(counts_E), N)
        return ffn(x_ND, w13_E2FD[0], w2_EDF[0]) if N else x_ND.new_empty(0, D)
    if be == "triton":
        from . import triton_moe

        counts_t = counts_E if isinstance(counts_E, torch.Tensor) else torch.tensor(_counts_list(counts_E))
        return triton_moe.experts_ffn_sorted(x_ND, counts_t, w13_E2FD, w2_EDF)
    if be == "grouped":
        if isinstance(counts_E, torch.Tensor):
            counts_t = counts_E.to(device=x_ND.device)
        else:
            counts_t = torch.tensor(list(counts_E), device=x_ND.device)
        offs_E = torch.cumsum(counts_t, 0).to(torch.int32)
        g_N2F = torch._grouped_mm(x_ND, w13_E2FD.transpose(-2, -1), offs=offs_E)
        return torch._grouped_mm(_swiglu(g_N2F, f), w2_EDF.transpose(-2, -1), offs=offs_E)
    counts = _counts_list(counts_E)
    assert len(counts) == E and sum(counts) == N, (len(counts), E, sum(counts), N)
    if be == "loop":
        y_ND = x_ND.new_empty(N, D)
        start = 0
        for e, c in enumerate(counts):
            if c:
                y_ND[start : start + c] = ffn(x_ND[start : start + c], w13_E2FD[e], w2_EDF[e])
                start += c
        return y_ND
    # padded: row n of expert e goes to pad[e, n - start_e]
    M = max(counts) if counts else 0
    if M == 0:
        return x_ND.new_empty(0, D)
    counts_t = torch.tensor(counts, device=x_ND.device)
    starts_E = torch.cumsum(counts_t, 0) - counts_t
    expert_N = torch.repeat_interleave(torch.arange(E, device=x_ND.device), counts_t)
    slot_N = expert_N * M + torch.arange(N, device=x_ND.device) - starts_E[expert_N]
    pad_EMD = x_ND.new_zeros(E * M, D).index_copy_(0, slot_N, x_ND).view(E, M, D)
    g_EM2F = torch.bmm(pad_EMD, w13_E2FD.transpose(1, 2))
    h_EMF = F.silu(g_EM2F[..., :f]) * g_EM2F[..., f:]
    y_EMD = torch.bmm(h_EMF, w2_EDF.transpose(1, 2))
    return y_EMD.reshape(E * M, D).index_select(0, slot_N)


def run_local_experts(
    x_ND: torch.Tensor,
    counts_L: torch.Tensor | Sequence[int],
    w13_L2FD: torch.Tensor,
    w2_LDF: torch.Tensor,
    backend: Backend | str = "auto",
) -> torch.Tensor:
    """What one EP rank computes: its L local experts (physical slots) on the rows dispatched to
    it, ``x_ND`` sorted by local slot with ``counts_L`` rows each. Returns ``y_ND``.

    This is the part of the layer that ``planner.cost.compute.expert_ffn_ms`` summed over the
    rank's slots predicts (dispatch, permute and combine are costed elsewhere).
    """
    return experts_ffn(x_ND, counts_L, w13_L2FD, w2_LDF, backend)


# ---- 4. combine ------------------------------------------------------------------------------


def combine(y_ND: torch.Tensor, order_N: torch.Tensor, topk_weights_TK: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``out_TD[token] += weight · y`` over the sorted pairs; float32 accumulation, fp32+ result."""
    K = topk_weights_TK.shape[1]
    acc = torch.promote_types(y_ND.dtype, torch.float32)
    w_N = topk_weights_TK.reshape(-1).index_select(0, order_N).to(acc)
    out_TD = torch.zeros(num_tokens, y_ND.shape[1], dtype=acc, device=y_ND.device)
    out_TD.index_add_(0, order_N // K, y_ND.to(acc) * w_N[:, None])
    return out_TD


# ---- the layer -------------------------------------------------------------------------------


def moe_forward(
    x_TD: torch.Tensor,
    w: MoEWeights,
    cfg: MoEConfig,
    *,
    backend: Backend | str = "auto",
    topk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The whole layer on one device: route, permute, expert FFN, combine, shared experts.

    ``topk`` = ``(topk_ids_TK, topk_weights_TK)`` replaces the router (to replay a trace).
    Returns ``out_TD`` in x's dtype. With ``backend="triton"`` steps 2-4 are
    ``triton_moe.fused_moe`` (permute fused into the first GEMM's loads, routing weight into the
    second's epilogue, then a float32 sum over the K choices).
    """
    T = x_TD.shape[0]
    ids_TK, weights_TK = topk if topk is not None else route(x_TD, w.router_ED, cfg, w.bias_E)
    if resolve_backend(backend, x_TD) == "triton":
        from . import triton_moe

        out_TD = triton_moe.fused_moe(x_TD, ids_TK, weights_TK, w.w13_E2FD, w.w2_EDF)
    else:
        x_ND, order_N, counts_E = permute(x_TD, ids_TK, cfg.num_experts)
        y_ND = experts_ffn(x_ND, counts_E, w.w13_E2FD, w.w2_EDF, backend)
        out_TD = combine(y_ND, order_N, weights_TK, T)
    if w.shared_w13_2SD is not None and w.shared_w2_DS is not None:
        out_TD += ffn(x_TD, w.shared_w13_2SD, w.shared_w2_DS).to(out_TD.dtype)
    return out_TD.to(x_TD.dtype)


def sharded_forward(
    x_TD: torch.Tensor,
    w: MoEWeights,
    cfg: MoEConfig,
    phy2log_P: Sequence[int] | torch.Tensor,
    slots_per_rank: int,
    slot_TK: torch.Tensor,
    *,
    topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    backend: Backend | str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer split over R = P / slots_per_rank EP ranks, in one process.

    ``phy2log_P`` gives the logical expert of each physical slot (slot p on rank
    p // slots_per_rank; a replica is a slot holding an expert that another slot holds too);
    ``slot_TK`` the physical slot serving each (token, choice) pair, e.g. from
    ``planner.simulator.choose_slots``. Each rank gathers its pairs sorted by local slot and runs
    :func:`run_local_experts` on its slots' weights; outputs are combined on the token's side.

    Returns ``(out_TD, tokens_RL)``: the layer output (equals :func:`moe_forward`'s when
    ``slot_TK`` serves each pair from a slot of its chosen expert) and the rows per rank and
    local slot.
    """
    T, K = slot_TK.shape
    dev = x_TD.device
    p2l_P = torch.as_tensor(phy2log_P, dtype=torch.long, device=dev)
    P = p2l_P.numel()
    assert P % slots_per_rank == 0, (P, slots_per_rank)
    R = P // slots_per_rank
    ids_TK, weights_TK = topk if topk is not None else route(x_TD, w.router_ED, cfg, w.bias_E)
    slot_TK = slot_TK.to(device=dev, dtype=torch.long)
    if not torch.equal(p2l_P[slot_TK], ids_TK.to(dev)):
        raise ValueError("slot_TK sends a (token, choice) pair to a slot that does not hold its expert")
    acc = torch.promote_types(x_TD.dtype, torch.float32)
    out_TD = torch.zeros(T, x_TD.shape[1], dtype=acc, device=dev)
    flat_slot_N = slot_TK.reshape(-1)
    w_N = weights_TK.reshape(-1).to(acc)
    tokens_RL = torch.zeros(R, slots_per_rank, dtype=torch.long)
    for r in range(R):
        lo = r * slots_per_rank
        mine_N = ((flat_slot_N >= lo) & (flat_slot_N < lo + slots_per_rank)).nonzero().squeeze(1)
        local_N = flat_slot_N[mine_N] - lo
        order = torch.argsort(local_N, stable=True)
        pairs_N = mine_N[order]
        counts_L = torch.bincount(local_N, minlength=slots_per_rank)
        tokens_RL[r] = counts_L.cpu()
        experts_L = p2l_P[lo : lo + slots_per_rank]
        y_ND = run_local_experts(
            x_TD.index_select(0, pairs_N // K), counts_L, w.w13_E2FD[experts_L], w.w2_EDF[experts_L], backend
        )
        out_TD.index_add_(0, pairs_N // K, y_ND.to(acc) * w_N[pairs_N][:, None])
    if w.shared_w13_2SD is not None and w.shared_w2_DS is not None:
        out_TD += ffn(x_TD, w.shared_w13_2SD, w.shared_w2_DS).to(acc)
    return out_TD.to(x_TD.dtype), tokens_RL


# ---- naive float64 reference -----------------------------------------------------------------


def reference_moe(
    x_TD: torch.Tensor, w: MoEWeights, cfg: MoEConfig, *, topk_ids_TK: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive float64 layer for tests: per token, score every expert, pick groups and experts by
    sorting Python lists, run each chosen expert's FFN, add the shared FFN.

    ``topk_ids_TK`` forces the chosen experts (weights still come from the scores).
    Returns ``(out_TD float64, topk_ids_TK int64)`` (ids in descending choice-score order).
    """
    d = torch.float64
    x = x_TD.to(d)
    router, w13, w2 = w.router_ED.to(d), w.w13_E2FD.to(d), w.w2_EDF.to(d)
    bias = [0.0] * cfg.num_experts if w.bias_E is None else [float(b) for b in w.bias_E]
    T, E, K = x.shape[0], cfg.num_experts, cfg.top_k
    out = torch.zeros(T, cfg.hidden, dtype=d)
    ids_out = torch.zeros(T, K, dtype=torch.long)
    for t in range(T):
        logits = [float(router[e] @ x[t]) for e in range(E)]
        if cfg.scoring == "softmax":
            m = max(logits)
            ex = [math.exp(v - m) for v in logits]
            scores = [v / sum(ex) for v in ex]
        else:
            scores = [1.0 / (1.0 + math.exp(-v)) for v in logits]
        choice = [s + b for s, b in zip(scores, bias, strict=True)]
        allowed = list(range(E))
        if cfg.n_group is not None and cfg.topk_group is not None:
            size = E // cfg.n_group
            gscore = []
            for g in range(cfg.n_group):
                members = sorted(choice[g * size : (g + 1) * size], reverse=True)
                gscore.append(members[0] if cfg.group_score == "max" else members[0] + members[1])
            best = sorted(range(cfg.n_group), key=lambda g: -gscore[g])[: cfg.topk_group]
            allowed = [e for e in range(E) if e // size in best]
        if topk_ids_TK is None:
            chosen = sorted(allowed, key=lambda e: -choice[e])[:K]
        else:
            chosen = [int(e) for e in topk_ids_TK[t]]
        ids_out[t] = torch.tensor(chosen)
        wts = [scores[e] for e in chosen]
        if cfg.norm_topk_prob:
            wts = [v / sum(wts) for v in wts]
        for e, wt in zip(chosen, wts, strict=True):
            g = w13[e] @ x[t]
            h = F.silu(g[: cfg.ffn]) * g[cfg.ffn :]
            out[t] += wt * cfg.routed_scaling * (w2[e] @ h)
        if w.shared_w13_2SD is not None and w.shared_w2_DS is not None:
            g = w.shared_w13_2SD.to(d) @ x[t]
            s = cfg.shared_ffn
            out[t] += w.shared_w2_DS.to(d) @ (F.silu(g[:s]) * g[s:])
    return out, ids_out
