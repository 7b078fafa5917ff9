"""A tiny torch MoE language model for the examples and ``benchmarks/recorder.py`` (CPU, seconds).

Each block is shaped like Hugging Face's ``MixtralSparseMoeBlock``: a ``gate`` ``nn.Linear``
(hidden -> experts) returning router logits, ``experts`` (SwiGLU FFNs) and ``top_k``; the
tokens' top-k experts come from a softmax over the logits, renormalised over the top-k.
``planner.RoutingRecorder`` finds these blocks by themselves (a module with ``gate`` and
``experts``).

Shapes: B batch, S sequence, T = B·S tokens, D hidden, F expert FFN width, E experts, k top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Expert(nn.Module):
    """SwiGLU FFN: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_TD)) * self.w3(x_TD))


class TinyMoEBlock(nn.Module):
    """Top-k routed experts (the Mixtral block's shape)."""

    def __init__(self, d: int, f: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.num_experts = num_experts
        self.gate = nn.Linear(d, num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(d, f) for _ in range(num_experts))

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        B, S, D = x_BSD.shape
        x_TD = x_BSD.reshape(-1, D)
        logits_TE = self.gate(x_TD)
        w_TK, ids_TK = torch.topk(logits_TE.softmax(dim=-1), self.top_k, dim=-1)
        w_TK = w_TK / w_TK.sum(dim=-1, keepdim=True)
        out_TD = torch.zeros_like(x_TD)
        for e in range(self.num_experts):
            tok, slot = torch.where(ids_TK == e)
            if tok.numel():
                out_TD.index_add_(0, tok, self.experts[e](x_TD[tok]) * w_TK[tok, slot, None])
        return out_TD.reshape(B, S, D)


class TinyMoELM(nn.Module):
    """Embedding, ``layers`` residual MoE blocks (pre-norm), LM head."""

    def __init__(self, vocab: int = 64, d: int = 64, f: int = 128, num_experts: int = 8, top_k: int = 2,
                 layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.blocks = nn.ModuleList(TinyMoEBlock(d, f, num_experts, top_k) for _ in range(layers))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens_BS)
        for norm, block in zip(self.norms, self.blocks, strict=True):
            h = h + block(norm(h))
        return self.head(h)
