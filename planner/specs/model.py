"""ModelSpec: the shape of an MoE model, as the planner needs it.

Field names follow the Hugging Face ``config.json`` meaning (docs/facts.md §1), in the planner's own
words. Derived numbers (expert parameters and bytes, total and active parameters, MoE layer
indices) are computed from the fields, never stored in a spec file; the ones the cost model
reads in its hot loops are ``cached_property`` (the spec is frozen; :meth:`ModelSpec.model_copy`
drops them so that a copy with changed fields recomputes them).

Legend: h = hidden_size, f = expert_intermediate_size, E = num_experts, k = top_k.
Expert parameters = 3·h·f (gate, up and down projections; SwiGLU).

Integer and boolean fields are strict: ``"4096"``, ``4096.0`` or ``true`` where an integer goes
is an error, not a silent conversion (a quoted or mistyped number in a spec file is a mistake).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, model_validator

from planner.specs.base import Spec

Dtype = Literal["bf16", "fp16", "fp32", "fp8", "mxfp4", "int4"]

#: Bytes per parameter, scales included: MXFP4 stores 4-bit values plus one 8-bit scale per
#: 32-element block (OCP Microscaling spec) = 4.25 bits; int4 assumes one fp16 scale per 128.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "mxfp4": 4.25 / 8,
    "int4": 0.5 + 2.0 / 128,
}


#: Upper bound on ``num_layers``: far above any real model (the largest have ~100-200 layers), and
#: keeps per-layer lists (``moe_layer_indices``) and arrays sized by layers bounded.
MAX_LAYERS = 4096

#: Upper bound on ``num_experts``: far above any real model (the most today have a few hundred
#: routed experts per layer), and keeps what is sized by experts bounded: per-layer id sets,
#: [layers, experts] count tables, and trace ids stored as int32.
MAX_EXPERTS = 65536


class AttentionSpec(Spec):
    """The attention block of a layer (used for non-expert weights, FLOPs and the KV cache)."""

    kind: Literal["mha", "gqa", "mla"] = Field(
        description="mha/gqa: standard (grouped-query) attention; mla: DeepSeek multi-head latent attention"
    )
    num_heads: StrictInt = Field(gt=0, description="Query heads (num_attention_heads)")
    num_kv_heads: StrictInt = Field(gt=0, description="Key/value heads (num_key_value_heads); equals num_heads for mha and mla")
    head_dim: StrictInt = Field(gt=0, description="Per-head dimension of q/k/v (for mla: qk_nope_head_dim + qk_rope_head_dim)")
    q_lora_rank: StrictInt | None = Field(default=None, ge=0, description="MLA: rank of the query down-projection (None: no query compression)")
    kv_lora_rank: StrictInt | None = Field(default=None, gt=0, description="MLA: rank of the compressed KV latent")
    qk_rope_head_dim: StrictInt | None = Field(default=None, gt=0, description="MLA: rotary part of the q/k head dimension")
    qk_nope_head_dim: StrictInt | None = Field(default=None, gt=0, description="MLA: non-rotary part of the q/k head dimension")
    v_head_dim: StrictInt | None = Field(default=None, gt=0, description="MLA: value head dimension")

    @model_validator(mode="after")
    def _check(self) -> AttentionSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.kind in ("mha", "mla") and self.num_kv_heads != self.num_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) must equal num_heads ({self.num_heads}) "
                f"when kind is '{self.kind}' (use 'gqa' for fewer key/value heads)"
            )
        if self.kind == "mla":
            for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required when kind is 'mla'")
            assert self.qk_nope_head_dim is not None and self.qk_rope_head_dim is not None
            if self.head_dim != self.qk_nope_head_dim + self.qk_rope_head_dim:
                raise ValueError(
                    f"head_dim ({self.head_dim}) must equal qk_nope_head_dim + qk_rope_head_dim "
                    f"({self.qk_nope_head_dim} + {self.qk_rope_head_dim}) when kind is 'mla'"
                )
        return self

    def params_per_layer(self, hidden: int) -> int:
        """Weights of one attention block (projections only; norms are negligible)."""
        if self.kind != "mla":
            q = hidden * self.num_heads * self.head_dim
            kv = 2 * hidden * self.num_kv_heads * self.head_dim
            o = self.num_heads * self.head_dim * hidden
            return q + kv + o
        assert self.kv_lora_rank and self.qk_rope_head_dim and self.qk_nope_head_dim and self.v_head_dim
        qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank:
            q = hidden * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk_head
        else:
            q = hidden * self.num_heads * qk_head
        kv_down = hidden * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_up = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
        o = self.num_heads * self.v_head_dim * hidden
        return q + kv_down + kv_up + o

    def kv_bytes_per_token_per_layer(self, dtype_bytes: float) -> float:
        """KV-cache bytes one token adds to one layer (docs/facts.md §6)."""
        if self.kind == "mla":
            assert self.kv_lora_rank and self.qk_rope_head_dim
            return (self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes
        return 2 * self.num_kv_heads * self.head_dim * dtype_bytes


class ModelSpec(Spec):
    """A Mixture-of-Experts transformer: experts, routing, attention shape and dtypes."""

    name: str = Field(min_length=1, description="Model name (a preset name or the user's own)")
    family: str = Field(
        default="custom",
        description="Architecture family: mixtral, qwen2_moe, qwen3_moe, deepseek (DeepSeekMoE), deepseek_v2, deepseek_v3, olmoe, gpt_oss, dbrx or custom",
    )
    hidden_size: StrictInt = Field(gt=0, description="Model width h (hidden_size / d_model)")
    num_layers: StrictInt = Field(
        gt=0, le=MAX_LAYERS, description=f"Transformer layers, dense ones included (num_hidden_layers); at most {MAX_LAYERS}"
    )
    first_k_dense: StrictInt = Field(default=0, ge=0, description="Leading layers with a dense FFN instead of experts (first_k_dense_replace)")
    moe_layer_freq: StrictInt = Field(default=1, gt=0, description="After the dense-first layers, every moe_layer_freq-th layer is an MoE layer")
    extra_dense_layers: tuple[StrictInt, ...] = Field(
        default=(),
        description="Further layers (0-based indices) with a dense FFN although the first_k_dense/moe_layer_freq pattern makes them MoE (Qwen mlp_only_layers)",
    )
    dense_intermediate_size: StrictInt = Field(default=0, ge=0, description="FFN width of the dense layers (intermediate_size); 0 if the model has none")
    num_experts: StrictInt = Field(
        gt=0, le=MAX_EXPERTS,
        description=f"Routed experts per MoE layer (n_routed_experts / num_experts / num_local_experts); at most {MAX_EXPERTS}",
    )
    top_k: StrictInt = Field(gt=0, description="Experts each token is routed to (num_experts_per_tok)")
    expert_intermediate_size: StrictInt = Field(gt=0, description="FFN width f of one routed expert (moe_intermediate_size)")
    num_shared_experts: StrictInt = Field(default=0, ge=0, description="Shared experts every token passes through (n_shared_experts)")
    shared_expert_intermediate_size: StrictInt = Field(
        default=0, ge=0, description="Total FFN width of the shared experts together (0: num_shared_experts × expert_intermediate_size)"
    )
    n_group: StrictInt | None = Field(default=None, gt=0, description="Expert groups for group-limited routing (DeepSeek n_group); None: no groups")
    topk_group: StrictInt | None = Field(default=None, gt=0, description="Groups a token may pick experts from (DeepSeek topk_group)")
    scoring: Literal["softmax", "sigmoid"] = Field(default="softmax", description="Router score function")
    attention: AttentionSpec = Field(description="Attention block shape")
    vocab_size: StrictInt = Field(gt=0, description="Vocabulary size (embedding and output head)")
    tie_embeddings: StrictBool = Field(default=False, description="Whether the output head shares the embedding matrix")
    mtp_layers: StrictInt = Field(
        default=0, ge=0,
        description="Multi-token-prediction layers trained after the last decoder layer (num_nextn_predict_layers; DeepSeek-V3: 1); not counted in the parameters",
    )
    weight_dtype: Dtype = Field(default="bf16", description="Dtype of non-expert weights")
    expert_dtype: Dtype = Field(default="bf16", description="Dtype of routed-expert weights (e.g. fp8 for DeepSeek-V3, mxfp4 for gpt-oss)")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        if self.first_k_dense >= self.num_layers:
            raise ValueError(
                f"first_k_dense ({self.first_k_dense}) must be < num_layers ({self.num_layers}): the model needs an MoE layer"
            )
        bad = [i for i in self.extra_dense_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(
                f"extra_dense_layers must be layer indices in [0, {self.num_layers}) (got {bad[0]})"
            )
        if len(set(self.extra_dense_layers)) != len(self.extra_dense_layers):
            raise ValueError("extra_dense_layers must not repeat a layer index")
        if not self.moe_layer_indices:
            raise ValueError(
                "the model needs at least one MoE layer: first_k_dense, moe_layer_freq and "
                "extra_dense_layers make every layer dense"
            )
        if self.num_dense_layers > 0 and self.dense_intermediate_size == 0:
            raise ValueError(
                f"dense_intermediate_size must be > 0: the model has {self.num_dense_layers} dense layer(s)"
            )
        if self.shared_expert_intermediate_size > 0 and self.num_shared_experts == 0:
            raise ValueError("num_shared_experts must be > 0 when shared_expert_intermediate_size is set")
        if (self.n_group is None) != (self.topk_group is None):
            raise ValueError("n_group and topk_group must be given together")
        if self.n_group is not None and self.topk_group is not None:
            if self.num_experts % self.n_group:
                raise ValueError(f"n_group ({self.n_group}) must divide num_experts ({self.num_experts})")
            if self.topk_group > self.n_group:
                raise ValueError(f"topk_group ({self.topk_group}) must be <= n_group ({self.n_group})")
            if self.top_k > self.topk_group * (self.num_experts // self.n_group):
                raise ValueError(
                    f"top_k ({self.top_k}) must be <= topk_group × experts per group "
                    f"({self.topk_group} × {self.num_experts // self.n_group})"
                )
        return self

    # ---- derived numbers -------------------------------------------------------------------

    @cached_property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices (0-based, among all layers) of the MoE layers."""
        extra = set(self.extra_dense_layers)
        return tuple(
            i
            for i in range(self.first_k_dense, self.num_layers)
            if (i - self.first_k_dense) % self.moe_layer_freq == 0 and i not in extra
        )

    @property
    def moe_layer_indices(self) -> list[int]:
        """Indices (0-based, among all layers) of the MoE layers, as a new list."""
        return list(self.moe_layers)

    @cached_property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @cached_property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert: 3·h·f."""
        return 3 * self.hidden_size * self.expert_intermediate_size

    @property
    def expert_bytes(self) -> float:
        """Bytes of one routed expert's weights in ``expert_dtype``."""
        return self.expert_params * DTYPE_BYTES[self.expert_dtype]

    @property
    def shared_ffn_size(self) -> int:
        """Total FFN width of the shared experts of one MoE layer."""
        if self.shared_expert_intermediate_size:
            return self.shared_expert_intermediate_size
        return self.num_shared_experts * self.expert_intermediate_size

    @property
    def shared_params_per_layer(self) -> int:
        return 3 * self.hidden_size * self.shared_ffn_size

    @property
    def router_params_per_layer(self) -> int:
        return self.hidden_size * self.num_experts

    @property
    def dense_ffn_params_per_layer(self) -> int:
        return 3 * self.hidden_size * self.dense_intermediate_size

    @property
    def embedding_params(self) -> int:
        n = self.vocab_size * self.hidden_size
        return n if self.tie_embeddings else 2 * n

    @property
    def attention_params(self) -> int:
        return self.num_layers * self.attention.params_per_layer(self.hidden_size)

    @cached_property
    def routed_expert_params(self) -> int:
        """All routed experts of all MoE layers."""
        return self.num_moe_layers * self.num_experts * self.expert_params

    @cached_property
    def non_expert_params(self) -> int:
        """Everything but routed experts: embeddings, attention, dense FFNs, shared experts, routers."""
        moe = self.num_moe_layers * (self.shared_params_per_layer + self.router_params_per_layer)
        dense = self.num_dense_layers * self.dense_ffn_params_per_layer
        return self.embedding_params + self.attention_params + moe + dense

    @cached_property
    def total_params(self) -> int:
        return self.non_expert_params + self.routed_expert_params

    @cached_property
    def active_params(self) -> int:
        """Parameters one token touches (top_k routed experts per MoE layer)."""
        return self.non_expert_params + self.num_moe_layers * self.top_k * self.expert_params

    @cached_property
    def non_expert_bytes(self) -> float:
        return self.non_expert_params * DTYPE_BYTES[self.weight_dtype]

    # ---- cached derived numbers and copies ---------------------------------------------------

    def model_copy(self, *, update: Any = None, deep: bool = False) -> ModelSpec:
        """pydantic's copy, less the cached derived numbers when fields change."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            for name in _CACHED:
                copied.__dict__.pop(name, None)
        return copied

    def __iter__(self):  # type: ignore[override]
        """``dict(spec)``: the fields, not the cached derived numbers."""
        yield from ((k, v) for k, v in super().__iter__() if k not in _CACHED)

    @property
    def experts_per_group(self) -> int:
        return self.num_experts // (self.n_group or 1)


_CACHED = frozenset(n for n, v in vars(ModelSpec).items() if isinstance(v, cached_property))
