"""ModelSpecs from Hugging Face ``config.json`` files (:func:`from_hf_config`).

Every HF field is checked here, before the ModelSpec is built, so that an error names the field
the user wrote (``moe_intermediate_size``), not the planner's own name for it. The families read
are :data:`HF_MODEL_TYPES`.

Conventions of the import, per family (see each ``_from_*`` function):

- Layers: DeepSeek makes layer i an MoE layer when ``i >= first_k_dense_replace`` and
  ``i % moe_layer_freq == 0``; Qwen when ``(i + 1) % decoder_sparse_step == 0`` and i is not in
  ``mlp_only_layers``. Both map exactly onto ``first_k_dense`` / ``moe_layer_freq`` /
  ``extra_dense_layers``.
- Expert groups are kept only where the model's router uses them: DeepSeek-V2 only with
  ``topk_method: group_limited_greedy`` (its ``greedy`` router ignores ``n_group``), DeepSeek-V3
  and Kimi-K2 whenever ``n_group > 1``.
- Dtypes: ``torch_dtype`` (or ``dtype``, its newer name) gives ``weight_dtype``; a float32
  checkpoint is planned at bf16, as serving engines load it (vLLM's ``--dtype auto`` casts fp32
  checkpoints to 16 bits). ``quantization_config.quant_method`` gives ``expert_dtype``: fp8
  (DeepSeek-V3, Kimi-K2), mxfp4 (gpt-oss), 4-bit gptq/awq as int4; other methods are refused
  rather than guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from planner.errors import InputError
from planner.specs.base import INT_MAX, INT_MIN, parse, show
from planner.specs.model import MAX_EXPERTS, MAX_LAYERS, ModelSpec

# ---- reading Hugging Face fields -------------------------------------------------------------

_MISSING = object()


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int | float):
        return show(v)
    return f"a {type(v).__name__}"


class _HF:
    """Typed, validated access to one (possibly nested) mapping of a HF config.

    Every failure is an :class:`InputError` naming ``source``, the full field path and the rule.
    Optional fields treat JSON ``null`` as absent (the HF config classes do the same).
    """

    def __init__(self, cfg: dict[str, Any], source: str, model_type: str, prefix: str = ""):
        self.cfg = cfg
        self.source = source
        self.model_type = model_type
        self.prefix = prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, rule: str) -> InputError:
        return InputError(f"{self.source}: {self.name(key)} {rule}")

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def _raw(self, key: str, required: bool) -> Any:
        if key not in self.cfg:
            if required:
                raise InputError(
                    f"{self.source}: {self.name(key)} is required for model_type {self.model_type}"
                )
            return _MISSING
        v = self.cfg[key]
        if v is None and not required:
            return _MISSING
        return v

    def _as_int(self, key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(key, f"must be an integer (got {_type_name(v)})")
        if isinstance(v, float):
            if not v.is_integer():
                raise self.fail(key, f"must be an integer (got {show(v)})")
            v = int(v)
        if not INT_MIN <= v <= INT_MAX:
            raise self.fail(key, f"must fit in 64 bits (got {show(v)})")
        return v

    def integer(
        self, key: str, *, minimum: int = 1, maximum: int | None = None, default: Any = _MISSING
    ) -> int:
        """An integer field in [``minimum``, ``maximum``]; required unless ``default`` is given."""
        v = self._raw(key, required=default is _MISSING)
        if v is _MISSING:
            return default
        n = self._as_int(key, v)
        if n < minimum:
            rule = "must be > 0" if minimum == 1 else f"must be >= {minimum}"
            raise self.fail(key, f"{rule} (got {n})")
        if maximum is not None and n > maximum:
            raise self.fail(key, f"must be <= {maximum} (got {n})")
        return n

    def layers(self, key: str) -> int:
        """A layer count (at most :data:`~planner.specs.model.MAX_LAYERS`)."""
        return self.integer(key, maximum=MAX_LAYERS)

    def experts(self, key: str) -> int:
        """An expert count (at most :data:`~planner.specs.model.MAX_EXPERTS`)."""
        return self.integer(key, maximum=MAX_EXPERTS)

    def opt_int(self, key: str, *, minimum: int = 1) -> int | None:
        """An optional integer field >= ``minimum``; absent or null gives None."""
        v = self._raw(key, required=False)
        if v is _MISSING:
            return None
        return self.integer(key, minimum=minimum)

    def boolean(self, key: str, default: bool) -> bool:
        v = self._raw(key, required=False)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            raise self.fail(key, f"must be true or false (got {_type_name(v)})")
        return v

    def string(self, key: str, default: Any = _MISSING) -> str:
        v = self._raw(key, required=default is _MISSING)
        if v is _MISSING:
            return default
        if not isinstance(v, str):
            raise self.fail(key, f"must be a string (got {_type_name(v)})")
        return v

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        v = self.string(key, default)
        if v not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)} (got {show(v)})")
        return v

    def int_list(self, key: str) -> list[int]:
        """An optional list of integers >= 0 (absent or null gives [])."""
        v = self._raw(key, required=False)
        if v is _MISSING:
            return []
        if not isinstance(v, list):
            raise self.fail(key, f"must be a list of layer indices (got {_type_name(v)})")
        out = []
        for i, item in enumerate(v):
            n = self._as_int(f"{key}[{i}]", item)
            if n < 0:
                raise self.fail(f"{key}[{i}]", f"must be >= 0 (got {n})")
            out.append(n)
        return out

    def sub(self, key: str) -> _HF:
        """A nested mapping (DBRX's ``ffn_config``, ``attn_config``), required."""
        v = self._raw(key, required=True)
        if not isinstance(v, dict):
            raise self.fail(key, f"must be a mapping of fields (got {_type_name(v)})")
        return _HF(v, self.source, self.model_type, prefix=f"{self.prefix}{key}.")

    def opt_sub(self, key: str) -> _HF | None:
        v = self._raw(key, required=False)
        if v is _MISSING:
            return None
        if not isinstance(v, dict):
            raise self.fail(key, f"must be a mapping of fields (got {_type_name(v)})")
        return _HF(v, self.source, self.model_type, prefix=f"{self.prefix}{key}.")


def _check_le(hf: _HF, small_key: str, small: int, big_key: str, big: int) -> None:
    if small > big:
        raise InputError(
            f"{hf.source}: {hf.name(small_key)} ({small}) must be <= {hf.name(big_key)} ({big})"
        )


# ---- dtypes ----------------------------------------------------------------------------------

_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "bf16"}


def _weight_dtype(hf: _HF) -> str:
    key = "torch_dtype" if hf.has("torch_dtype") else "dtype"
    v = hf.string(key, "bfloat16")
    if v not in _TORCH_DTYPES:
        raise hf.fail(key, f"must be one of {', '.join(_TORCH_DTYPES)} (got {show(v)})")
    return _TORCH_DTYPES[v]


def _expert_dtype(hf: _HF, weight_dtype: str) -> str:
    q = hf.opt_sub("quantization_config")
    if q is None:
        return weight_dtype
    method = q.string("quant_method")
    if method == "fp8":
        return "fp8"
    if method == "mxfp4":
        return "mxfp4"
    if method in ("gptq", "awq"):
        bits = q.integer("bits")
        if bits == 4:
            return "int4"
        raise q.fail("bits", f"must be 4 for quant_method {method} (got {bits}); other widths are not supported")
    raise q.fail(
        "quant_method",
        f"{show(method)} is not supported (supported: fp8, mxfp4, 4-bit gptq/awq); "
        "write a ModelSpec .yaml with expert_dtype instead",
    )


def _dtypes(hf: _HF) -> dict[str, str]:
    w = _weight_dtype(hf)
    return {"weight_dtype": w, "expert_dtype": _expert_dtype(hf, w)}


# ---- attention -------------------------------------------------------------------------------


def _std_attention(
    hf: _HF,
    hidden: int,
    hidden_key: str,
    heads_key: str = "num_attention_heads",
    kv_key: str = "num_key_value_heads",
    kv: _HF | None = None,
    kv_default: int | None = None,
) -> dict[str, Any]:
    """Multi-head or grouped-query attention.

    Key/value heads default to ``kv_default``, else to the query heads (the HF convention for a
    missing ``num_key_value_heads``); ``head_dim`` defaults to hidden / heads.
    """
    heads = hf.integer(heads_key)
    kv_hf = kv or hf
    kv_heads = kv_hf.integer(kv_key, default=kv_default or heads)
    if heads % kv_heads:
        raise InputError(
            f"{hf.source}: {hf.name(heads_key)} ({heads}) must be a multiple of "
            f"{kv_hf.name(kv_key)} ({kv_heads})"
        )
    if hf.has("head_dim"):
        head_dim = hf.integer("head_dim")
    else:
        if hidden % heads:
            raise InputError(
                f"{hf.source}: {hf.name(hidden_key)} ({hidden}) must be divisible by "
                f"{hf.name(heads_key)} ({heads}) when head_dim is not given"
            )
        head_dim = hidden // heads
    return {
        "kind": "mha" if kv_heads == heads else "gqa",
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
    }


def _mla_attention(hf: _HF) -> dict[str, Any]:
    heads = hf.integer("num_attention_heads")
    nope = hf.integer("qk_nope_head_dim")
    rope = hf.integer("qk_rope_head_dim")
    # null (HF) or 0 (DeepSeek's own inference configs) both mean: no query compression.
    q_lora = hf.opt_int("q_lora_rank", minimum=0) or None
    return {
        "kind": "mla",
        "num_heads": heads,
        # MLA caches one latent shared by all heads; the key/value head count is the head count.
        "num_kv_heads": heads,
        "head_dim": nope + rope,
        "q_lora_rank": q_lora,
        "kv_lora_rank": hf.integer("kv_lora_rank"),
        "qk_rope_head_dim": rope,
        "qk_nope_head_dim": nope,
        "v_head_dim": hf.integer("v_head_dim"),
    }


# ---- routing ---------------------------------------------------------------------------------


def _check_top_k(hf: _HF, experts_key: str, experts: int, topk_key: str, top_k: int) -> None:
    if top_k > experts:
        raise InputError(
            f"{hf.source}: {hf.name(topk_key)} ({top_k}) must be <= {hf.name(experts_key)} ({experts})"
        )


def _groups(hf: _HF, experts_key: str, experts: int, top_k: int) -> dict[str, int | None]:
    """DeepSeek ``n_group`` / ``topk_group``; one group (or none) means no group limit."""
    n_group = hf.opt_int("n_group")
    if n_group is None or n_group == 1:
        return {"n_group": None, "topk_group": None}
    topk_group = hf.integer("topk_group")
    if experts % n_group:
        raise InputError(
            f"{hf.source}: n_group ({n_group}) must divide {hf.name(experts_key)} ({experts})"
        )
    _check_le(hf, "topk_group", topk_group, "n_group", n_group)
    per_group = experts // n_group
    if top_k > topk_group * per_group:
        raise InputError(
            f"{hf.source}: num_experts_per_tok ({top_k}) must be <= topk_group × experts per group "
            f"({topk_group} × {per_group})"
        )
    return {"n_group": n_group, "topk_group": topk_group}


# ---- families --------------------------------------------------------------------------------


def _common(hf: _HF) -> dict[str, Any]:
    """Fields every family spells the same way: vocabulary, tied head, dtypes."""
    return {
        "vocab_size": hf.integer("vocab_size"),
        "tie_embeddings": hf.boolean("tie_word_embeddings", False),
        # multi-token-prediction layers (DeepSeek-V3's num_nextn_predict_layers; absent: none)
        "mtp_layers": hf.integer("num_nextn_predict_layers", minimum=0, default=0),
        **_dtypes(hf),
    }


def _every_layer_moe(hf: _HF, hidden: int, experts: int, top_k: int, family: str) -> dict[str, Any]:
    """The fields of a model whose every layer is MoE with standard attention (Mixtral, OLMoE,
    gpt-oss): expert width from ``intermediate_size``."""
    return {
        "hidden_size": hidden,
        "num_layers": hf.layers("num_hidden_layers"),
        "num_experts": experts,
        "top_k": top_k,
        "expert_intermediate_size": hf.integer("intermediate_size"),
        "attention": _std_attention(hf, hidden, "hidden_size"),
        "family": family,
        **_common(hf),
    }


def _from_mixtral_like(hf: _HF, experts_key: str) -> dict[str, Any]:
    """Mixtral (``num_local_experts``) and OLMoE (``num_experts``): every layer MoE."""
    hidden = hf.integer("hidden_size")
    experts = hf.experts(experts_key)
    top_k = hf.integer("num_experts_per_tok")
    _check_top_k(hf, experts_key, experts, "num_experts_per_tok", top_k)
    return _every_layer_moe(hf, hidden, experts, top_k, hf.model_type)


def _from_mixtral(hf: _HF) -> dict[str, Any]:
    return _from_mixtral_like(hf, "num_local_experts")


def _from_olmoe(hf: _HF) -> dict[str, Any]:
    return _from_mixtral_like(hf, "num_experts")


def _qwen_experts(hf: _HF) -> tuple[str, int]:
    """Qwen's expert count and the field it came from: ``num_experts`` as published, or
    ``num_local_experts``, which ``transformers`` 5's ``Qwen3MoeConfig.save_pretrained`` writes
    instead (its ``attribute_map`` maps ``num_experts`` to it); both must agree when both are there."""
    if not hf.has("num_local_experts"):
        return "num_experts", hf.experts("num_experts")
    local = hf.experts("num_local_experts")
    if hf.has("num_experts") and hf.experts("num_experts") != local:
        raise InputError(
            f"{hf.source}: num_experts ({hf.experts('num_experts')}) and num_local_experts ({local}) must agree"
        )
    return "num_local_experts", local


def _from_qwen(hf: _HF) -> dict[str, Any]:
    """Qwen2-MoE / Qwen3-MoE: ``decoder_sparse_step`` and ``mlp_only_layers`` pick dense layers."""
    hidden = hf.integer("hidden_size")
    n_layers = hf.layers("num_hidden_layers")
    experts_key, experts = _qwen_experts(hf)
    top_k = hf.integer("num_experts_per_tok")
    _check_top_k(hf, experts_key, experts, "num_experts_per_tok", top_k)
    step = hf.integer("decoder_sparse_step", default=1)
    mlp_only = hf.int_list("mlp_only_layers")
    for i, layer in enumerate(mlp_only):
        if layer >= n_layers:
            raise hf.fail(
                f"mlp_only_layers[{i}]", f"must be a layer index < num_hidden_layers ({n_layers}) (got {layer})"
            )
    # Layer i is MoE iff (i + 1) % step == 0 and i not in mlp_only_layers (HF modeling code):
    # the MoE layers are step-1, 2·step-1, …, i.e. first_k_dense = step-1, moe_layer_freq = step.
    first_dense = step - 1
    extra = sorted({i for i in mlp_only if i >= first_dense and (i - first_dense) % step == 0})
    moe_layers = len(range(first_dense, n_layers, step)) - len(extra)
    if moe_layers <= 0:
        raise InputError(
            f"{hf.source}: decoder_sparse_step ({step}) and mlp_only_layers leave no MoE layer "
            f"among num_hidden_layers ({n_layers})"
        )
    has_dense = moe_layers < n_layers
    spec: dict[str, Any] = {
        "hidden_size": hidden,
        "num_layers": n_layers,
        "first_k_dense": first_dense,
        "moe_layer_freq": step,
        "extra_dense_layers": extra,
        "dense_intermediate_size": hf.integer("intermediate_size") if has_dense else 0,
        "num_experts": experts,
        "top_k": top_k,
        "expert_intermediate_size": hf.integer("moe_intermediate_size"),
        "attention": _std_attention(hf, hidden, "hidden_size"),
        "family": hf.model_type,
        **_common(hf),
    }
    if hf.model_type == "qwen2_moe":
        # Qwen2-MoE layers carry one shared expert of this width (HF Qwen2MoeSparseMoeBlock).
        shared = hf.integer("shared_expert_intermediate_size", minimum=0, default=0)
        if shared:
            spec["num_shared_experts"] = 1
            spec["shared_expert_intermediate_size"] = shared
    return spec


def _from_deepseek(hf: _HF) -> dict[str, Any]:
    """DeepSeekMoE (``deepseek``: standard attention, no routing groups), DeepSeek-V2, DeepSeek-V3
    and Kimi-K2 (which keeps DeepSeek-V3's field names)."""
    moe1 = hf.model_type == "deepseek"
    v2 = hf.model_type == "deepseek_v2"
    hidden = hf.integer("hidden_size")
    n_layers = hf.layers("num_hidden_layers")
    experts = hf.experts("n_routed_experts")
    top_k = hf.integer("num_experts_per_tok")
    _check_top_k(hf, "n_routed_experts", experts, "num_experts_per_tok", top_k)
    first_k = hf.integer("first_k_dense_replace", minimum=0, default=0)
    freq = hf.integer("moe_layer_freq", default=1)
    # HF modeling code: layer i is MoE iff i >= first_k_dense_replace and i % moe_layer_freq == 0,
    # i.e. MoE layers start at the first multiple of freq that is >= first_k.
    first_moe = -(-first_k // freq) * freq
    if first_moe >= n_layers:
        raise InputError(
            f"{hf.source}: first_k_dense_replace ({first_k}) and moe_layer_freq ({freq}) leave no "
            f"MoE layer among num_hidden_layers ({n_layers})"
        )
    if moe1:
        groups: dict[str, int | None] = {"n_group": None, "topk_group": None}
    elif v2:
        method = hf.string("topk_method", "greedy")
        groups = (
            _groups(hf, "n_routed_experts", experts, top_k)
            if method == "group_limited_greedy"
            else {"n_group": None, "topk_group": None}
        )
    else:
        groups = _groups(hf, "n_routed_experts", experts, top_k)
    return {
        "family": "deepseek" if moe1 else "deepseek_v2" if v2 else "deepseek_v3",
        "hidden_size": hidden,
        "num_layers": n_layers,
        "first_k_dense": first_moe,
        "moe_layer_freq": freq,
        "dense_intermediate_size": hf.integer("intermediate_size") if (first_moe > 0 or freq > 1) else 0,
        "num_experts": experts,
        "top_k": top_k,
        "expert_intermediate_size": hf.integer("moe_intermediate_size"),
        "num_shared_experts": hf.integer("n_shared_experts", minimum=0, default=0),
        **groups,
        "scoring": hf.choice("scoring_func", ("softmax", "sigmoid"), "softmax" if (v2 or moe1) else "sigmoid"),
        "attention": _std_attention(hf, hidden, "hidden_size") if moe1 else _mla_attention(hf),
        **_common(hf),
    }


def _from_gpt_oss(hf: _HF) -> dict[str, Any]:
    """gpt-oss: ``num_local_experts``; top-k as ``experts_per_token`` and/or ``num_experts_per_tok``."""
    hidden = hf.integer("hidden_size")
    experts = hf.experts("num_local_experts")
    a = hf.opt_int("experts_per_token")
    b = hf.opt_int("num_experts_per_tok")
    if a is None and b is None:
        raise InputError(
            f"{hf.source}: experts_per_token (or num_experts_per_tok) is required for model_type gpt_oss"
        )
    if a is not None and b is not None and a != b:
        raise InputError(
            f"{hf.source}: experts_per_token ({a}) and num_experts_per_tok ({b}) must agree"
        )
    top_k = a if a is not None else b
    assert top_k is not None
    topk_key = "experts_per_token" if a is not None else "num_experts_per_tok"
    _check_top_k(hf, "num_local_experts", experts, topk_key, top_k)
    return _every_layer_moe(hf, hidden, experts, top_k, "gpt_oss")


def _from_dbrx(hf: _HF) -> dict[str, Any]:
    """DBRX: ``d_model`` / ``n_heads`` / ``n_layers``, experts under ``ffn_config``, KV heads under ``attn_config``."""
    hidden = hf.integer("d_model")
    ffn = hf.sub("ffn_config")
    attn = hf.sub("attn_config")
    experts = ffn.experts("moe_num_experts")
    top_k = ffn.integer("moe_top_k")
    _check_top_k(ffn, "moe_num_experts", experts, "moe_top_k", top_k)
    return {
        "hidden_size": hidden,
        "num_layers": hf.layers("n_layers"),
        "num_experts": experts,
        "top_k": top_k,
        "expert_intermediate_size": ffn.integer("ffn_hidden_size"),
        # DbrxAttentionConfig's default is kv_n_heads = 1 (multi-query attention).
        "attention": _std_attention(
            hf, hidden, "d_model", heads_key="n_heads", kv_key="kv_n_heads", kv=attn, kv_default=1
        ),
        "family": "dbrx",
        **_common(hf),
    }


_IMPORTERS: dict[str, Callable[[_HF], dict[str, Any]]] = {
    "mixtral": _from_mixtral,
    "qwen2_moe": _from_qwen,
    "qwen3_moe": _from_qwen,
    "deepseek": _from_deepseek,
    "deepseek_v2": _from_deepseek,
    "deepseek_v3": _from_deepseek,
    "kimi_k2": _from_deepseek,
    "olmoe": _from_olmoe,
    "gpt_oss": _from_gpt_oss,
    "dbrx": _from_dbrx,
}

#: The ``model_type`` values :func:`from_hf_config` reads.
HF_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_IMPORTERS))


def _default_name(source: str, model_type: str) -> str:
    p = Path(source)
    if p.name == "config.json" and p.parent.name not in ("", "."):
        return p.parent.name
    if p.suffix.lower() == ".json" and p.stem and p.stem != "config":
        return p.stem
    return f"hf-{model_type}"


def from_hf_config(cfg: dict[str, Any], source: str, *, name: str | None = None) -> ModelSpec:
    """A ModelSpec from a Hugging Face ``config.json`` already read into ``cfg``.

    ``source`` names the file in error messages (``config.json: hidden_size must be > 0 (got -5)``).
    ``name`` defaults to the folder holding ``config.json`` (``…/Mixtral-8x7B-v0.1/config.json``
    gives ``Mixtral-8x7B-v0.1``), else the file's stem, else ``hf-<model_type>``.
    """
    if not isinstance(cfg, dict):
        raise InputError(f"{source}: expected a mapping of fields, got {type(cfg).__name__}")
    supported = ", ".join(HF_MODEL_TYPES)
    if "model_type" not in cfg:
        raise InputError(f"{source}: model_type is required (supported: {supported})")
    model_type = cfg["model_type"]
    if not isinstance(model_type, str) or model_type not in _IMPORTERS:
        raise InputError(
            f"{source}: model_type {_type_name(model_type)} is not supported (supported: {supported})"
        )
    hf = _HF(cfg, source, model_type)
    data = _IMPORTERS[model_type](hf)
    data["name"] = name or _default_name(source, model_type)
    return parse(ModelSpec, data, source)
