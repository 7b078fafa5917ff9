"""``moe-planner trace synth|convert|stats|compare|bias-sim``: make, convert and summarise routing traces.

- ``synth`` writes a synthetic per-token trace (:func:`planner.traces.synth_trace`) for a model
  (``--model``) or a bare shape (``--layers --experts --top-k``); ``--null-fraction`` makes a
  seeded share of its choices -1, no expert (:func:`planner.traces.nulls.with_null_choices`).
- ``convert`` reads any trace the planner accepts (``.npz``, SGLang ``logical_count`` in
  ``.json`` / ``.pt``) and writes it as ``.npz`` (counts-only input gives a counts-only file; a
  per-token file's sequences, ``seq_id`` / ``pos``, are kept).
- ``stats`` prints a per-layer table (imbalance, batch skew, entropy, temporal reuse, working
  set, held-out cross-layer prediction, pair lift) and a summary block, one line per statistic
  (definitions: :mod:`planner.traces.realism`), or the :func:`planner.traces.trace_stats` dict
  with ``--json``.
- ``compare A B`` prints the two traces' :func:`planner.traces.stats.summary_statistics` side by
  side (statistic | A | B | B/A), or both dicts and the ratios with ``--json``.

Bad input raises :class:`~planner.errors.InputError` (one line, exit 2, printed by
:func:`planner.cli.main`); existing outputs are kept unless ``--force``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import click

from planner.cli.bias_cmd import bias_sim
from planner.errors import InputError
from planner.io import check_writable
from planner.specs.model import ModelSpec
from planner.specs.model_io import load_model
from planner.traces import load_trace, save_trace, synth_trace, trace_stats
from planner.traces.nulls import with_null_choices
from planner.traces.realism import SEQS_PER_RANK, SKEW_BATCHES, WORKING_SET_WINDOWS, num_sequences
from planner.traces.stats import SUMMARY_KEYS, summary_statistics


def _synth_defaults() -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(synth_trace).parameters.items()}


_D = _synth_defaults()


def _load_model(arg: str | None) -> ModelSpec | None:
    if arg is None:
        return None
    return load_model(arg)


def _check_out(out: str, force: bool) -> Path:
    p = Path(out)
    if p.suffix.lower() != ".npz":
        raise InputError(f"--out {out}: traces are written as .npz")
    check_writable(p, force)
    return p


def _describe(trace: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": "tokens" if trace.has_tokens else "counts",
        "model": trace.model,
        "num_layers": trace.num_layers,
        "num_experts": trace.num_experts,
        "num_steps": trace.num_steps,
    }
    if trace.has_tokens:
        d["top_k"] = trace.top_k
        d["num_tokens"] = trace.num_tokens
        d["has_weights"] = trace.topk_weights is not None
        d["num_ranks"] = None if trace.source_rank is None else int(trace.source_rank.max()) + 1
        d["num_sequences"] = num_sequences(trace)
    return d


def _summary_line(d: dict[str, Any]) -> str:
    who = f"model {d['model']}, " if d.get("model") else ""
    if d["kind"] == "counts":
        return (
            f"{who}counts-only, {d['num_layers']} MoE layers × {d['num_experts']} experts, "
            f"{d['num_steps']} step{'s' if d['num_steps'] != 1 else ''}"
        )
    ranks = f", {d['num_ranks']} ranks" if d.get("num_ranks") else ""
    seqs = f", {d['num_sequences']} sequence{'s' if d['num_sequences'] != 1 else ''}" if d.get("num_sequences") else ""
    return (
        f"{who}{d['num_layers']} MoE layers × {d['num_tokens']} tokens × top-{d['top_k']} "
        f"of {d['num_experts']} experts, {d['num_steps']} step{'s' if d['num_steps'] != 1 else ''}{ranks}{seqs}"
    )


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@click.group()
def trace() -> None:
    """Make, convert and summarise routing traces."""


@trace.command("synth")
@click.option("--model", "model_arg", metavar="NAME|FILE", help="Model preset name or file (config.json / spec.yaml).")
@click.option("--layers", type=int, help="MoE layers (without --model).")
@click.option("--experts", type=int, help="Routed experts per layer (without --model).")
@click.option("--top-k", "top_k", type=int, help="Experts per token (without --model).")
@click.option("--n-group", type=int, help="Expert groups for group-limited routing (default: the model's).")
@click.option("--topk-group", type=int, help="Groups a token may use (with --n-group).")
@click.option("--tokens", type=int, default=_D["num_tokens"], show_default=True, help="Tokens in the trace.")
@click.option("--tokens-per-step", type=int, default=_D["tokens_per_step"], show_default=True, help="Tokens per step (batch).")
@click.option("--ranks", type=int, default=_D["num_ranks"], show_default=True, help="Data-parallel ranks the tokens come from.")
@click.option("--seed", type=int, default=_D["seed"], show_default=True, help="Random seed (same seed, same trace).")
@click.option("--skew", type=float, help="Zipf exponent of expert popularity (varies by layer around it). Default: the model's fitted value.")
@click.option("--affinity", type=float, help="Mean probability an expert is followed by its preferred next-layer expert, in [0, 1]. Default: fitted.")
@click.option("--coactivation", type=float, help="Strength of expert clusters chosen together (0: none). Default: fitted.")
@click.option("--domain-spread", type=float, help="Spread of the input domains' popularity offsets. Default: fitted.")
@click.option("--seq-len", type=float, help="Median request length in tokens (log-normal). Default: fitted.")
@click.option("--seq-len-spread", type=float, help="Log-spread of request lengths (0: all the same). Default: fitted.")
@click.option("--topic", type=float, help="Per-request topic strength (log-popularity offsets). Default: fitted.")
@click.option("--topic-drift", type=float, help="How far a request's topic drifts along it. Default: fitted.")
@click.option("--reuse", type=float, help="How strongly a run of tokens of a request shares its experts. Default: fitted.")
@click.option("--reuse-span", type=float, help="Tokens in such a run. Default: fitted.")
@click.option("--repick", type=float, help="Probability a token re-picks a neighbour's experts. Default: fitted.")
@click.option("--no-sequences", is_flag=True, help="Leave seq_id / pos out (plans then keep the file's steps).")
@click.option("--drift", type=float, default=_D["drift"], show_default=True, help="Change of log-popularity from first to last step (std).")
@click.option("--rank-mix", type=float, default=_D["rank_mix"], show_default=True, help="How different the ranks' input mixes are, in [0, 1].")
@click.option("--sticky-ranks", is_flag=True, help="Each rank keeps its input mix for every step (decode serving).")
@click.option("--rank-groups", type=int, default=1, show_default=True, help="Consecutive ranks sharing one input mix (e.g. GPUs per node).")
@click.option("--no-weights", is_flag=True, help="Leave gate weights out (smaller file).")
@click.option("--null-fraction", type=float, default=0.0, show_default=True,
              help="Share of choices made -1 (no expert: dynamic top-k / AdaMoE null experts), seeded.")
@click.option("--null-min-experts", type=int, default=0, show_default=True,
              help="Experts every token keeps with --null-fraction (0: a token may use none; 1: threshold routing).")
@click.option("--out", required=True, metavar="FILE.npz", help="Output trace file.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def synth(
    model_arg: str | None,
    layers: int | None,
    experts: int | None,
    top_k: int | None,
    n_group: int | None,
    topk_group: int | None,
    tokens: int,
    tokens_per_step: int,
    ranks: int,
    seed: int,
    skew: float | None,
    affinity: float | None,
    coactivation: float | None,
    domain_spread: float | None,
    seq_len: float | None,
    seq_len_spread: float | None,
    topic: float | None,
    topic_drift: float | None,
    reuse: float | None,
    reuse_span: float | None,
    repick: float | None,
    no_sequences: bool,
    drift: float,
    rank_mix: float,
    sticky_ranks: bool,
    rank_groups: int,
    no_weights: bool,
    null_fraction: float,
    null_min_experts: int,
    out: str,
    force: bool,
    as_json: bool,
) -> None:
    """Write a synthetic routing trace with realistic structure (requests with their own topics and
    reused experts, skew, cross-layer affinity, co-activation, drift, per-rank input mixes), fitted
    to real routing per model (docs/synthetic-traces.md)."""
    if model_arg is None and None in (layers, experts, top_k):
        raise InputError("trace synth: give --model, or all of --layers, --experts and --top-k")
    path = _check_out(out, force)
    model = _load_model(model_arg)
    tr = synth_trace(
        model,
        num_layers=layers,
        num_experts=experts,
        top_k=top_k,
        num_tokens=tokens,
        tokens_per_step=tokens_per_step,
        num_ranks=ranks,
        skew=skew,
        affinity=affinity,
        coactivation=coactivation,
        drift=drift,
        rank_mix=rank_mix,
        sticky_ranks=sticky_ranks,
        rank_groups=rank_groups,
        n_group=n_group,
        topk_group=topk_group,
        weights=not no_weights,
        seed=seed,
        domain_spread=domain_spread,
        seq_len=seq_len,
        seq_len_spread=seq_len_spread,
        topic=topic,
        topic_drift=topic_drift,
        reuse=reuse,
        reuse_span=reuse_span,
        repick=repick,
        sequences=not no_sequences,
    )
    if null_fraction or null_min_experts:
        tr = with_null_choices(tr, null_fraction, seed, min_experts=null_min_experts)
    save_trace(tr, path)
    d = _describe(tr) | {"out": str(path), "bytes": path.stat().st_size, "seed": seed}
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        click.echo(f"wrote {path} ({_size(path)}): {_summary_line(d)}, seed {seed}")


@trace.command("convert")
@click.argument("src", metavar="IN")
@click.option("--out", required=True, metavar="FILE.npz", help="Output trace file.")
@click.option("--model", "model_arg", metavar="NAME|FILE", help="Model: fills missing fields, drops SGLang dense-layer rows, checks the shape.")
@click.option("--tokens-per-step", type=int, help="Step size for a per-token file without a step array.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def convert(src: str, out: str, model_arg: str | None, tokens_per_step: int | None, force: bool, as_json: bool) -> None:
    """Convert a trace (.npz, or SGLang logical_count .json / .pt) to the planner's .npz."""
    path = _check_out(out, force)
    model = _load_model(model_arg)
    tr = load_trace(src, model=model, tokens_per_step=tokens_per_step)
    save_trace(tr, path)
    d = _describe(tr) | {"source": src, "out": str(path), "bytes": path.stat().st_size}
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        click.echo(f"wrote {path} ({_size(path)}): {_summary_line(d)}")


def _fmt(x: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}{spec}}"


def _slash(sm: dict[str, float | None], keys: list[str], spec: str) -> str:
    return " / ".join(_fmt(sm[k], spec, 0) for k in keys)


#: Per-layer columns of ``trace stats``: (key, header, format, width); a column is shown when
#: some layer has it.
_COLUMNS = [
    ("imbalance", "imbalance", ".2f", 9),
    ("step_imbalance", "step-imb", ".2f", 8),
    ("entropy", "entropy", ".3f", 7),
    ("skew_random_16", "skew-r16", ".2f", 8),
    ("skew_seq_16", "skew-s16", ".2f", 8),
    ("reuse", "reuse", ".3f", 6),
    ("working_set_16", "ws-16", ".1f", 6),
    ("xlayer_top1_precision", "xl-top1", ".3f", 7),
    ("xlayer_set_recall", "xl-recall", ".3f", 9),
    ("lift_p99", "lift-p99", ".2f", 8),
]


def _layer_table(s: dict[str, Any]) -> list[str]:
    cols = [c for c in _COLUMNS if any(row.get(c[0]) is not None for row in s["layers"])]
    lines = ["layer  " + "  ".join(f"{h:>{w}}" for _, h, _, w in cols)]
    for row in s["layers"]:
        lines.append(f"{row['layer']:>5}  " + "  ".join(_fmt(row.get(k), f, w) for k, _, f, w in cols))
    return lines


def _realism_lines(sm: dict[str, float | None], s: dict[str, Any]) -> list[str]:
    """The summary block of ``trace stats``: one line per statistic the trace has."""
    E, k = s["num_experts"], s["top_k"]
    out = [
        f"busiest expert / mean, whole trace: {_fmt(sm['imbalance_whole_min'], '.2f', 0)}-"
        f"{_fmt(sm['imbalance_whole_max'], '.2f', 0)} over layers (mean {_fmt(sm['imbalance_whole_mean'], '.2f', 0)})"
    ]
    bs = " / ".join(str(b) for b in SKEW_BATCHES)
    if sm[f"skew_random_{SKEW_BATCHES[0]}"] is not None or sm[f"skew_random_{SKEW_BATCHES[-1]}"] is not None:
        out.append(f"  in a batch of {bs} random tokens: {_slash(sm, [f'skew_random_{b}' for b in SKEW_BATCHES], '.2f')}")
    if sm["reuse_mean"] is not None:
        out.append(f"  in {bs} contiguous tokens of the sequences: {_slash(sm, [f'skew_seq_{b}' for b in SKEW_BATCHES], '.2f')}")
        out.append(
            f"experts reused from the previous token of the sequence: mean {100 * sm['reuse_mean']:.1f}%, "
            f"first layer {100 * sm['reuse_first_layer']:.1f}%, last {100 * sm['reuse_last_layer']:.1f}%, "
            f"max {100 * sm['reuse_max']:.1f}% (random {100 * sm['reuse_random']:.1f}%)"
        )
        ws = " / ".join(str(w) for w in WORKING_SET_WINDOWS)
        out.append(
            f"distinct experts over {ws} consecutive tokens of a sequence: "
            f"{_slash(sm, [f'working_set_{w}' for w in WORKING_SET_WINDOWS], '.1f')} of {E}"
        )
    if sm["xlayer_top1_precision"] is not None:
        out.append(
            f"layer l+1 guessed from layer l (held-out half): top guess right {sm['xlayer_top1_precision']:.3f}, "
            f"recall of the {k}-set {sm['xlayer_set_recall']:.3f} (popularity {sm['xlayer_popularity_precision']:.3f} / "
            f"{sm['xlayer_popularity_recall']:.3f}, random {sm['xlayer_random']:.3f})"
        )
    if sm["lift_p50"] is not None:
        out.append(f"same-layer pair lift p50 / p99 / max: {_slash(sm, ['lift_p50', 'lift_p99', 'lift_max'], '.2f')}")
    if sm[f"rank_locality_own_{SEQS_PER_RANK[0]}"] is not None:
        parts = [
            f"{n}: {_fmt(sm[f'rank_locality_own_{n}'], '.2f', 0)} vs {_fmt(sm[f'rank_locality_all_{n}'], '.2f', 0)}"
            for n in SEQS_PER_RANK
        ]
        out.append("rank locality, 8 ranks, own vs all ranks' top-16 by sequences per rank: " + "; ".join(parts))
    return out


def _table(name: str, s: dict[str, Any]) -> str:
    d = {k: s[k] for k in ("kind", "model", "num_layers", "num_experts", "num_steps", "top_k", "num_tokens",
                           "num_ranks", "num_sequences")}
    lines = [f"{name}: {_summary_line(d)}", *_layer_table(s)]
    sm = s["summary"]
    lines += _realism_lines(sm["realism"], s)
    lines.append(
        f"per-step imbalance {_fmt(sm['step_imbalance_mean'], '.2f', 0)}; "
        f"normalized entropy: mean {_fmt(sm['entropy_mean'], '.3f', 0)}, min {_fmt(sm['entropy_min'], '.3f', 0)}"
    )
    cl = sm["cross_layer"]
    if cl is not None:
        lines.append(
            f"cross-layer (in-sample): next-layer expert predicted from the most frequent transition "
            f"{100 * cl['next_top1']:.1f}% of the time (most-popular baseline "
            f"{100 * cl['next_top1_baseline']:.1f}%), mutual information {cl['next_mi_bits']:.3f} bits"
        )
    ca = sm["coactivation"]
    if ca is not None:
        lines.append(
            f"co-activation: top {ca['top_pairs']} pairs by lift: mean lift {ca['top_pair_lift']:.2f}, "
            f"{100 * ca['top_pair_share']:.1f}% of token pairs ({100 * ca['top_pair_share_uniform']:.1f}% "
            "of all pairs)"
        )
    label = {"cross_layer": "cross-layer", "coactivation": "co-activation", "xlayer": "held-out cross-layer",
             "skew_seq": "contiguous-batch skew", "working_set": "working set", "rank_locality": "rank locality"}
    for what, why in s["unavailable"].items():
        lines.append(f"{label.get(what, what.replace('_', ' '))}: unavailable ({why})")
    return "\n".join(lines)


@trace.command("stats")
@click.argument("file", metavar="FILE")
@click.option("--model", "model_arg", metavar="NAME|FILE", help="Check the trace against a model (and drop SGLang dense-layer rows).")
@click.option("--tokens-per-step", type=int, help="Step size for a per-token file without a step array.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random batches and halves.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON on stdout.")
def stats(file: str, model_arg: str | None, tokens_per_step: int | None, seed: int, as_json: bool) -> None:
    """Summarise a trace: per-layer imbalance, batch skew, entropy, temporal reuse, working sets,
    cross-layer predictability, co-activation lift, rank locality."""
    model = _load_model(model_arg)
    tr = load_trace(file, model=model, tokens_per_step=tokens_per_step)
    s = trace_stats(tr, seed=seed)
    if as_json:
        click.echo(json.dumps(s, indent=2))
    else:
        click.echo(_table(Path(file).name, s))


def _num(x: float | None) -> str:
    return _fmt(x, ".2f" if x is not None and abs(x) >= 10 else ".4f", 9)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else b / a


@trace.command("compare")
@click.argument("file_a", metavar="A")
@click.argument("file_b", metavar="B")
@click.option("--model", "model_arg", metavar="NAME|FILE", help="Check both traces against a model (and drop SGLang dense-layer rows).")
@click.option("--tokens-per-step", type=int, help="Step size for a per-token file without a step array.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random batches and halves.")
@click.option("--json", "as_json", is_flag=True, help="Print both traces' statistics as JSON on stdout.")
def compare(file_a: str, file_b: str, model_arg: str | None, tokens_per_step: int | None, seed: int, as_json: bool) -> None:
    """Two traces' headline statistics side by side: statistic | A | B | B/A."""
    model = _load_model(model_arg)
    side = {}
    for tag, f in (("a", file_a), ("b", file_b)):
        tr = load_trace(f, model=model, tokens_per_step=tokens_per_step)
        side[tag] = {"file": f, **_describe(tr), "statistics": summary_statistics(tr, seed=seed)}
    sa, sb = side["a"]["statistics"], side["b"]["statistics"]
    ratio = {k: _ratio(sa[k], sb[k]) for k in SUMMARY_KEYS}
    if as_json:
        click.echo(json.dumps({"a": side["a"], "b": side["b"], "ratio": ratio, "seed": seed}, indent=2))
        return
    lines = [f"A = {Path(file_a).name}: {_summary_line(side['a'])}", f"B = {Path(file_b).name}: {_summary_line(side['b'])}"]
    w = max(len(k) for k in SUMMARY_KEYS)
    lines.append(f"{'statistic':<{w}}  {'A':>9}  {'B':>9}  {'B/A':>6}")
    for key in SUMMARY_KEYS:
        lines.append(f"{key:<{w}}  {_num(sa[key])}  {_num(sb[key])}  {_fmt(ratio[key], '.3f', 6)}")
    click.echo("\n".join(lines))


trace.add_command(bias_sim)  # planner/cli/bias_cmd.py: auxiliary-loss-free balancing over steps
