"""Megatron-core: the parallelism arguments, and the expert permutation that realizes a placement.

**Arguments** (names as Megatron-LM's ``megatron/training/arguments.py`` parses them; the test
checks them against the list taken from it). ``--tensor-model-parallel-size``,
``--pipeline-model-parallel-size``, ``--expert-model-parallel-size``,
``--expert-tensor-parallel-size``, ``--context-parallel-size`` (cp > 1), the pipeline layout
(:func:`planner.specs.degrees.pipeline_layout`: ``--num-layers-per-virtual-pipeline-stage`` when
even, ``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers`` (with
``--num-virtual-stages-per-pipeline-rank``) or ``--pipeline-model-parallel-layout``),
``--sequence-parallel`` (tp > 1: required when EP and TP combine), the model's shape
(:func:`model_args`: layers, widths, heads, sequence, vocabulary, MTP), ``--bf16`` and in fp8
training ``--fp8-format e4m3 --fp8-recipe tensorwise --fp8-param-gather``, the MoE shape (``--num-experts``,
``--moe-router-topk``, ``--moe-ffn-hidden-size``, ``--moe-layer-freq`` as a Python list pattern
when the model has dense layers, ``--moe-router-num-groups``/``--moe-router-group-topk`` for
group-limited routing, ``--moe-router-score-function``), ``--moe-grouped-gemm``,
``--moe-token-dispatcher-type alltoall`` and ``--use-distributed-optimizer`` (docs/facts.md §4);
``--overlap-moe-expert-parallel-comm`` where the step was priced with combined 1F1B (with full
recompute also ``--attention-dropout 0 --hidden-dropout 0``, which that schedule's replay needs:
Megatron-LM docs/user-guide/features/moe_a2a_overlap.md).

**Permutation.** Megatron places experts contiguously: EP rank ``r`` holds global experts
``[r·E/G, (r+1)·E/G)`` (``num_experts % EP == 0``). A placement without replicas (P = E) is a
permutation per MoE layer: slot ``p`` — global expert index ``p`` in Megatron — must hold the
checkpoint's expert ``perm[l, p] = phy2log[l, p]``. Realizing it means moving expert weights
*and* router rows together (:func:`apply_permutation`)::

    new expert p  <- old expert perm[p]        (every expert tensor of the layer)
    new router[p] <- old router[perm[p]]       (router.weight rows, router.expert_bias entries)

Then the new router's logit ``p`` equals the old logit ``perm[p]`` and expert ``p`` computes what
old expert ``perm[p]`` did, so every token's output is unchanged (top-k softmax or sigmoid
routing is equivariant under a permutation of the experts). Group-limited routing
(``--moe-router-num-groups``) groups experts by contiguous index; it is unchanged only when the
permutation maps whole groups onto whole groups, and the export says when it does not.
A placement with replicas cannot be expressed (Megatron has one copy of each expert): the
arguments are still written, the permutation is left out, and a note says so.

**State-dict keys** (Megatron-core naming of a full, unsharded checkpoint, 0-based layer index;
configurable): ``decoder.layers.{layer}.mlp.experts.local_experts.{expert}.linear_fc1.weight``
(SequentialMLP), ``decoder.layers.{layer}.mlp.experts.linear_fc1.weight{expert}`` (TEGroupedMLP),
the same for ``linear_fc2`` and biases, and ``decoder.layers.{layer}.mlp.router.weight`` [E, h] /
``decoder.layers.{layer}.mlp.router.expert_bias`` [E] (``megatron/core/transformer/moe/router.py``;
the two expert layouts as converted by RLinf's ``moe_seq_to_te_group``). Keys may carry any
prefix (``module.``, ``model.``).

**Files.** ``.json`` (``args``, ``permutation`` {``decoder_layers``, ``perm``}, ``notes``) or a
text file (``.txt``/``.args``/``.sh``): one shell-quoted argument per line, the permutation as
``# perm <moe layer> <decoder layer>: ids`` comment lines.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import planner.exports._files as _files
from planner.errors import InputError
from planner.exports._common import ImportedPlacement, phy2log_of, redundant_of
from planner.specs.degrees import pipeline_layout
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan

SUFFIXES = (".json", ".txt", ".args", ".sh")

#: Per-expert tensors of one MoE layer: ``{layer}`` is the decoder layer, ``{expert}`` the global
#: expert index.
EXPERT_KEYS: tuple[str, ...] = tuple(
    f"decoder.layers.{{layer}}.mlp.experts.{body}"
    for fc in ("linear_fc1", "linear_fc2")
    for kind in ("weight", "bias")
    for body in (f"local_experts.{{expert}}.{fc}.{kind}", f"{fc}.{kind}{{expert}}")
)
#: Tensors indexed by expert along dim 0 (rows of the router).
ROUTER_KEYS: tuple[str, ...] = (
    "decoder.layers.{layer}.mlp.router.weight",
    "decoder.layers.{layer}.mlp.router.expert_bias",
)


# ---- arguments -------------------------------------------------------------------------------


def _layer_freq(model: ModelSpec) -> str:
    """``--moe-layer-freq`` pattern, e.g. ``([0]*1+[1]*26)`` (1 = MoE layer)."""
    moe = set(model.moe_layer_indices)
    flags = [1 if i in moe else 0 for i in range(model.num_layers)]
    runs: list[tuple[int, int]] = []
    for f in flags:
        if runs and runs[-1][0] == f:
            runs[-1] = (f, runs[-1][1] + 1)
        else:
            runs.append((f, 1))
    return "(" + "+".join(f"[{f}]*{n}" for f, n in runs) + ")"


def model_args(m: ModelSpec, seq_len: int) -> list[str]:
    """The model-shape arguments ``pretrain_gpt.py`` needs for ``m`` (names as Megatron-LM's
    ``megatron/training/arguments.py`` parses them): layers, widths, heads (GQA or MLA), sequence
    and positions, RMSNorm / SwiGLU / RoPE without biases, the vocabulary (NullTokenizer), the
    MoE shape and its MTP layers."""
    att = m.attention
    out = [
        "--num-layers", str(m.num_layers),
        "--hidden-size", str(m.hidden_size),
        # Megatron's ffn-hidden-size is the dense layers' width; a model without any takes the expert's
        "--ffn-hidden-size", str(m.dense_intermediate_size or m.expert_intermediate_size),
        "--num-attention-heads", str(att.num_heads),
    ]
    if att.kind == "mla":
        out += ["--multi-latent-attention"]
        if att.q_lora_rank:
            out += ["--q-lora-rank", str(att.q_lora_rank)]
        out += [
            "--kv-lora-rank", str(att.kv_lora_rank),
            "--qk-head-dim", str(att.qk_nope_head_dim),
            "--qk-pos-emb-head-dim", str(att.qk_rope_head_dim),
            "--v-head-dim", str(att.v_head_dim or att.head_dim),
        ]
    else:
        out += ["--kv-channels", str(att.head_dim)]
        if att.num_kv_heads != att.num_heads:
            out += ["--group-query-attention", "--num-query-groups", str(att.num_kv_heads)]
    if m.family == "qwen3_moe":
        out += ["--qk-layernorm"]  # Qwen3 normalizes q and k per head (config.json: Qwen3MoeAttention q_norm/k_norm)
    out += [
        "--seq-length", str(seq_len), "--max-position-embeddings", str(seq_len),
        "--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(m.vocab_size),
    ]
    if not m.tie_embeddings:
        out += ["--untie-embeddings-and-output-weights"]
    out += [
        "--num-experts", str(m.num_experts),
        "--moe-router-topk", str(m.top_k),
        "--moe-ffn-hidden-size", str(m.expert_intermediate_size),
    ]
    if m.shared_ffn_size:
        out += ["--moe-shared-expert-intermediate-size", str(m.shared_ffn_size)]
    if m.num_dense_layers:
        out += ["--moe-layer-freq", _layer_freq(m)]
    if m.n_group is not None and m.topk_group is not None:
        out += ["--moe-router-num-groups", str(m.n_group), "--moe-router-group-topk", str(m.topk_group)]
    out += ["--moe-router-score-function", m.scoring]
    if m.mtp_layers:
        out += ["--mtp-num-layers", str(m.mtp_layers)]
    return out


def args(plan: Plan) -> list[str]:
    """Megatron-core command-line arguments for the plan's degrees, pipeline layout, precision and
    the model's shape (:func:`model_args`)."""
    m, par = plan.model, plan.parallel
    chosen = plan.search.chosen if plan.search is not None and plan.workload.mode == "train" else None
    out = [
        "--tensor-model-parallel-size", str(par.tp),
        "--pipeline-model-parallel-size", str(par.pp),
        "--expert-model-parallel-size", str(par.ep),
        "--expert-tensor-parallel-size", str(par.etp),
    ]
    if par.cp > 1:
        out += ["--context-parallel-size", str(par.cp)]
    layout = pipeline_layout(m.num_layers, par.pp, par.vpp, mtp=m.mtp_layers,
                             first=chosen.pp_first if chosen else None, last=chosen.pp_last if chosen else None)
    if isinstance(layout, str):
        raise InputError(f"parallel: {layout}", field="parallel")
    out += layout.megatron_args()
    if par.tp > 1:
        out += ["--sequence-parallel"]
    out += model_args(m, plan.workload.seq_len)
    out += ["--moe-grouped-gemm", "--moe-token-dispatcher-type", "alltoall"]
    if plan.workload.mode == "train":
        out += ["--bf16"]
        if plan.workload.train_dtype == "fp8":  # Transformer Engine current scaling, fp8 weights
            out += ["--fp8-format", "e4m3", "--fp8-recipe", "tensorwise", "--fp8-param-gather"]
    if chosen is None or chosen.distributed_optimizer:
        out += ["--use-distributed-optimizer"]
    if chosen is not None:  # the parallelism search's training settings (planner.solve.parallel)
        out += ["--micro-batch-size", str(chosen.micro_batch)]
        if chosen.global_batch:
            out += ["--global-batch-size", str(chosen.global_batch)]
        if chosen.recompute == "selective":
            out += ["--recompute-granularity", "selective"]
        elif chosen.recompute == "full":
            out += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
        out += ["--overlap-grad-reduce"] + (["--overlap-param-gather"] if chosen.distributed_optimizer else [])
        if chosen.a2a_overlap:  # combined 1F1B, as priced; its full recompute needs dropout off
            out += ["--overlap-moe-expert-parallel-comm"]
            if chosen.recompute == "full":
                out += ["--attention-dropout", "0", "--hidden-dropout", "0"]
    return out


def _pairs(argv: Sequence[str]) -> list[list[str]]:
    """Group ``argv`` into [flag, values...] lines."""
    lines: list[list[str]] = []
    for a in argv:
        if a.startswith("--") or not lines:
            lines.append([a])
        else:
            lines[-1].append(a)
    return lines


# ---- permutation -----------------------------------------------------------------------------


def permutation(plan: Plan) -> np.ndarray | None:
    """``perm_LE`` [L, E]: new expert ``p`` takes checkpoint expert ``perm[l, p]``; ``None`` when
    the placement has replicas (Megatron holds one copy of each expert)."""
    if redundant_of(plan):
        return None
    return phy2log_of(plan)


def invert_permutation(perm_LE: np.ndarray) -> np.ndarray:
    """``inv[l, e]``: the new index of checkpoint expert ``e`` (``perm[l, inv[l, e]] == e``)."""
    perm = np.asarray(perm_LE, dtype=np.int64)
    inv = np.empty_like(perm)
    rows = np.arange(perm.shape[0])[:, None]
    inv[rows, perm] = np.arange(perm.shape[1])[None, :]
    return inv


def _check_perm(perm_LE: np.ndarray) -> np.ndarray:
    perm = np.asarray(perm_LE)
    if perm.ndim != 2 or not np.issubdtype(perm.dtype, np.integer):
        raise InputError(f"perm_LE must be an integer array [layers, experts], got shape {perm.shape}, dtype {perm.dtype}")
    E = perm.shape[1]
    want = np.arange(E)
    for l, row in enumerate(perm):
        if not np.array_equal(np.sort(row), want):
            raise InputError(f"perm_LE[{l}] is not a permutation of 0..{E - 1}: each expert must appear exactly once")
    return perm.astype(np.int64)


def group_notes(model: ModelSpec, perm_LE: np.ndarray) -> list[str]:
    """A note when the permutation moves experts across routing groups."""
    if model.n_group is None or model.n_group <= 1:
        return []
    gs = model.num_experts // model.n_group
    blocks = perm_LE.reshape(perm_LE.shape[0], model.n_group, gs) // gs
    mixed = np.nonzero((blocks != blocks[:, :, :1]).any(axis=(1, 2)))[0]
    if not mixed.size:
        return []
    return [
        f"group-limited routing (n_group {model.n_group}, groups of {gs} contiguous experts): the permutation "
        f"moves experts across groups in {mixed.size} of {perm_LE.shape[0]} MoE layers (first: MoE layer {int(mixed[0])}), "
        "so routing changes unless the router's groups are remapped too"
    ]


def _regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{layer\}|\{expert\})", template)
    body = "".join(
        "(?P<layer>\\d+)" if p == "{layer}" else "(?P<expert>\\d+)" if p == "{expert}" else re.escape(p)
        for p in parts
    )
    return re.compile(f"^(?P<prefix>.*?){body}$")


def _take_rows(value: Any, perm: np.ndarray) -> Any:
    """``value[perm]`` for a numpy array or a torch tensor (rows = dim 0)."""
    if type(value).__module__.split(".")[0] == "torch":
        import torch

        return value.index_select(0, torch.as_tensor(perm, dtype=torch.long, device=value.device))
    return np.asarray(value)[perm]


def apply_permutation(
    state_dict: Mapping[str, Any],
    perm_LE: np.ndarray,
    *,
    layer_indices: Sequence[int] | None = None,
    expert_keys: Sequence[str] = EXPERT_KEYS,
    router_keys: Sequence[str] = ROUTER_KEYS,
) -> dict[str, Any]:
    """A new state dict whose experts and router rows are permuted: new ``p`` <- old ``perm[l, p]``.

    ``state_dict`` is a full (unsharded) checkpoint, values numpy arrays or torch tensors; the
    input is not modified (untouched values are shared, not copied). ``perm_LE`` [L, E] has one
    row per MoE layer; ``layer_indices`` gives the decoder layer of each row (default: the MoE
    layers found in the state dict, in increasing order, which must number L). Layers of
    ``layer_indices`` absent from the state dict (another pipeline stage's) are skipped.
    ``expert_keys`` are templates with ``{layer}`` and ``{expert}``; ``router_keys`` templates with
    ``{layer}`` whose tensors are permuted along dim 0.
    """
    perm = _check_perm(perm_LE)
    L, E = perm.shape
    ex_res = [_regex(t) for t in expert_keys]
    ro_res = [_regex(t) for t in router_keys]
    for t in expert_keys:
        if "{layer}" not in t or "{expert}" not in t:
            raise InputError(f"expert key template {t!r} needs both {{layer}} and {{expert}}")
    for t in router_keys:
        if "{layer}" not in t:
            raise InputError(f"router key template {t!r} needs {{layer}}")

    experts: dict[tuple[str, int, int], dict[int, str]] = defaultdict(dict)  # (prefix, template, layer) -> expert -> key
    routers: list[tuple[int, str]] = []
    for key in state_dict:
        for i, rx in enumerate(ex_res):
            mt = rx.match(key)
            if mt:
                experts[(mt["prefix"], i, int(mt["layer"]))][int(mt["expert"])] = key
                break
        else:
            for rx in ro_res:
                mt = rx.match(key)
                if mt:
                    routers.append((int(mt["layer"]), key))
                    break
    found = sorted({layer for _, _, layer in experts} | {layer for layer, _ in routers})
    if not found:
        raise InputError(
            "state dict has no key matching the expert or router templates "
            f"(e.g. {expert_keys[0]!r}); pass expert_keys/router_keys for another naming"
        )
    if layer_indices is None:
        if len(found) != L:
            raise InputError(
                f"state dict has {len(found)} MoE layers ({found[:8]}{' …' if len(found) > 8 else ''}), "
                f"the permutation has {L}; pass layer_indices"
            )
        row_of = {layer: i for i, layer in enumerate(found)}
    else:
        if len(layer_indices) != L:
            raise InputError(f"layer_indices has {len(layer_indices)} entries, the permutation has {L} rows")
        row_of = {int(layer): i for i, layer in enumerate(layer_indices)}
        stray = [layer for layer in found if layer not in row_of]
        if stray:
            raise InputError(f"state dict has MoE layer {stray[0]}, which layer_indices does not list")

    out = dict(state_dict)
    for (_prefix, t, layer), by_expert in experts.items():
        if sorted(by_expert) != list(range(E)):
            have = sorted(by_expert)
            raise InputError(
                f"layer {layer}: {expert_keys[t]!r} matches experts {have[0]}..{have[-1]} ({len(have)}), "
                f"the permutation has {E}: merge the EP shards into one full state dict first"
            )
        p = perm[row_of[layer]]
        for j in range(E):
            out[by_expert[j]] = state_dict[by_expert[int(p[j])]]
    for layer, key in routers:
        value = state_dict[key]
        n = value.shape[0] if hasattr(value, "shape") and len(value.shape) else None
        if n != E:
            raise InputError(f"{key}: dim 0 has {n} rows, the permutation has {E} experts")
        out[key] = _take_rows(value, perm[row_of[layer]])
    return out


# ---- the export file -------------------------------------------------------------------------


def build(plan: Plan) -> dict[str, Any]:
    perm = permutation(plan)
    m = plan.model
    argv = args(plan)
    return {
        "format": "megatron",
        "model": m.name,
        "args": argv,
        "command_line": shlex.join(argv),
        "permutation": None
        if perm is None
        else {"decoder_layers": list(m.moe_layer_indices), "perm": perm.tolist()},
        "notes": notes(plan),
    }


def flags(plan: Plan, path: str | Path | None = None) -> list[str]:
    return args(plan)


def notes(plan: Plan) -> list[str]:
    m, par = plan.model, plan.parallel
    out: list[str] = []
    R = redundant_of(plan)
    if R:
        out.append(
            f"the placement has {R} redundant slots: Megatron holds one copy of each expert, so no permutation "
            "is written (plan without --redundant-experts for a Megatron checkpoint)"
        )
        if m.num_experts % par.ep:
            out.append(f"Megatron needs num_experts ({m.num_experts}) divisible by expert-model-parallel-size ({par.ep})")
    else:
        perm = permutation(plan)
        assert perm is not None
        out += group_notes(m, perm)
        if np.array_equal(perm, np.tile(np.arange(m.num_experts), (perm.shape[0], 1))):
            out.append("the placement is Megatron's contiguous one: the checkpoint needs no permutation")
    layout = pipeline_layout(m.num_layers, par.pp, par.vpp, mtp=m.mtp_layers)
    if not isinstance(layout, str) and layout.note():
        out.append(layout.note())
    return out


def dumps(payload: dict[str, Any], path: Path) -> bytes:
    suffix = _files.suffix_of(path, SUFFIXES, "Megatron arguments")
    if suffix == ".json":
        return (json.dumps(payload, indent=1) + "\n").encode("utf-8")
    lines = [
        f"# moe-planner export --to megatron: {payload['model']}",
        "# Megatron-core arguments, one per line (bash: eval \"ARGS=($(grep -v '^#' FILE))\")",
    ]
    lines += [shlex.join(pair) for pair in _pairs(payload["args"])]
    lines += [f"# note: {n}" for n in payload["notes"]]
    perm = payload["permutation"]
    if perm is not None:
        lines.append("# expert permutation per MoE layer: new expert p (contiguous per EP rank) <- checkpoint expert perm[p]")
        for l, (layer, row) in enumerate(zip(perm["decoder_layers"], perm["perm"], strict=True)):
            lines.append(f"# perm {l} {layer}: " + " ".join(map(str, row)))
    return ("\n".join(lines) + "\n").encode("utf-8")


_PERM_LINE = re.compile(r"^# perm (\d+) (\d+):((?: -?\d+)*)\s*$")


def _parse_text(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path.name}: cannot read as UTF-8 text ({e.__class__.__name__})") from None
    argv: list[str] = []
    layers: list[int] = []
    rows: list[list[int]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# perm "):
            mt = _PERM_LINE.match(line)
            if not mt or int(mt[1]) != len(rows):
                raise InputError(f"{path.name}: line {n}: expected '# perm {len(rows)} <decoder layer>: <ids>'")
            layers.append(int(mt[2]))
            rows.append([int(x) for x in mt[3].split()])
        elif line.strip() and not line.lstrip().startswith("#"):
            try:
                argv += shlex.split(line)
            except ValueError as e:
                raise InputError(f"{path.name}: line {n}: {e}") from None
    return {"args": argv, "permutation": {"decoder_layers": layers, "perm": rows} if rows else None}


def _arg(argv: list[str], flag: str, source: str) -> int:
    if flag not in argv or argv.index(flag) + 1 >= len(argv):
        raise InputError(f"{source}: {flag} is required")
    value = argv[argv.index(flag) + 1]
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{source}: {flag} must be an integer (got {value!r})") from None


def load(path: str | Path, *, model: ModelSpec | None = None, ep: int | None = None) -> ImportedPlacement:
    """Read the permutation back as the placement it realizes: ``phy2log = perm`` [L, E], with
    ``E / --expert-model-parallel-size`` slots per GPU."""
    p = Path(path)
    suffix = _files.suffix_of(p, SUFFIXES, "Megatron arguments")
    if suffix == ".json":
        raw = _files.read_json(p)
        if not isinstance(raw, dict) or not isinstance(raw.get("args"), list):
            raise InputError(f"{p.name}: expected an object with an 'args' list (a moe-planner megatron export)")
    else:
        raw = _parse_text(p)
    argv = [str(a) for a in raw["args"]]
    file_ep = _arg(argv, "--expert-model-parallel-size", p.name)
    perm_obj = raw.get("permutation")
    if perm_obj is None:
        raise InputError(
            f"{p.name}: holds no expert permutation (its plan had redundant experts, which Megatron cannot hold)"
        )
    if not isinstance(perm_obj, dict) or "perm" not in perm_obj:
        raise InputError(f"{p.name}: permutation must be an object with 'decoder_layers' and 'perm'")
    perm = _files.int_array(perm_obj["perm"], p.name, "permutation.perm", 2)
    perm = _check_perm_file(perm, p.name)
    layers = perm_obj.get("decoder_layers")
    if not isinstance(layers, list) or len(layers) != perm.shape[0]:
        raise InputError(f"{p.name}: permutation.decoder_layers must list one decoder layer per row of perm ({perm.shape[0]})")
    if model is not None:
        if list(layers) != list(model.moe_layer_indices) or perm.shape[1] != model.num_experts:
            raise InputError(
                f"{p.name}: permutation has {perm.shape[0]} MoE layers × {perm.shape[1]} experts, model {model.name} has "
                f"{model.num_moe_layers} × {model.num_experts}: the file is for another model"
            )
    if ep is not None and ep != file_ep:
        raise InputError(f"{p.name}: --expert-model-parallel-size is {file_ep}, ep given is {ep}")
    if perm.shape[1] % file_ep:
        raise InputError(f"{p.name}: {perm.shape[1]} experts do not divide over --expert-model-parallel-size {file_ep}")
    return ImportedPlacement(perm, perm.shape[1] // file_ep, "megatron")


def _check_perm_file(perm: np.ndarray, source: str) -> np.ndarray:
    try:
        return _check_perm(perm)
    except InputError as e:
        raise InputError(f"{source}: permutation.{e}") from None
