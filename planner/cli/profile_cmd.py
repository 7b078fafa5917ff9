"""``moe-planner profile``: measure this device's kernel tables and write a hardware profile.

    moe-planner profile --device cuda --out hwprofiles/h100-mine.json
    moe-planner profile --device cuda --quick --model deepseek-v3 --out my-h100.json
    torchrun --nproc-per-node 8 -m planner profile --device cuda --out hwprofiles/h100-node.json
    moe-planner profile --device cpu --base h100 --out /tmp/cpu.json      # tiny sizes, for tests

What is measured and how: ``kernels/profiler.py`` (installed as ``planner_kernels.profiler``);
which profile fields come from ``--base``: ``kernels/profile_build.py``. The profile is validated against
:class:`planner.specs.hardware.HardwareProfile` before it is written (atomically, refusing to
overwrite without ``--force``); every measurement goes to a raw file beside it
(``--raw``, default ``<out folder>/measurements/NAME-profile-DATE.json``). Under ``torchrun``
only rank 0 writes. Progress goes to stderr; ``--json`` prints a summary on stdout.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import re
from pathlib import Path

import click

from planner.errors import InputError
from planner.io import atomic_write_text, check_writable
from planner.kernel_loader import load_kernels
from planner.specs.base import parse
from planner.specs.hardware import HardwareProfile, dumps_profile, load_hardware
from planner.specs.model_io import load_model


def _name_from(out: str) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(out).stem.lower()).strip("-._")
    return stem or "profile"


def _display(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


@click.command()
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Device to measure (default: cuda when torch sees a GPU, else cpu)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Profile to write (hwprofiles/NAME.json)")
@click.option("--name", default=None, help="Profile name (default: the --out file stem)")
@click.option("--model", "models", multiple=True,
              help="Measure the FFN shapes of this model only (preset, config.json or spec); repeat for several (default: every preset)")
@click.option("--base", default=None,
              help="Profile to take the datasheet fields from (default: the shipped profile of this GPU kind)")
@click.option("--quick", is_flag=True, help="Fewer token counts, sizes and runs")
@click.option("--budget-s", type=float, default=None, help="Soft time budget, s: past it figures take one short run")
@click.option("--tokens", default=None, help="Comma-separated token counts for the expert-FFN tables (e.g. 1,16,256)")
@click.option("--runs", type=int, default=None, help="Runs per figure, the minimum kept (default: 3, --quick 2, cpu 2)")
@click.option("--reps", type=int, default=10, show_default=True, help="Timed calls per run (median kept)")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed calls before each run")
@click.option("--max-shapes", type=int, default=None, help="Measure only the N smallest FFN shapes")
@click.option("--no-fp8", "no_fp8", is_flag=True, help="Skip the fp8 (e4m3) expert-FFN tables")
@click.option("--raw", "raw_path", default=None, type=click.Path(dir_okay=False),
              help="Where to write every raw measurement (default: <out folder>/measurements/NAME-profile-DATE.json)")
@click.option("--force", is_flag=True, help="Overwrite --out / --raw if they exist")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout")
def profile(device, out_path, name, models, base, quick, budget_s, tokens, runs, reps, warmup, max_shapes, no_fp8,
            raw_path, force, as_json) -> None:
    """Measure this device (expert FFN, grouped GEMM, copies, peaks, collectives) and write a hardware profile."""
    for flag, v in (("--runs", runs), ("--reps", reps), ("--max-shapes", max_shapes)):
        if v is not None and v < 1:
            raise InputError(f"{flag} must be >= 1 (got {v})")
    if warmup < 0:
        raise InputError(f"--warmup must be >= 0 (got {warmup})")
    if budget_s is not None and not budget_s > 0:
        raise InputError(f"--budget-s must be > 0 seconds (got {budget_s})")
    tok = None
    if tokens is not None:
        try:
            tok = tuple(sorted({int(v) for v in tokens.split(",") if v.strip()}))
        except ValueError:
            raise InputError(f"--tokens must be comma-separated integers (got {tokens!r})") from None
        if not tok or tok[0] < 1:
            raise InputError(f"--tokens must list token counts >= 1 (got {tokens!r})")
    name = name or _name_from(out_path)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise InputError(f"--name must be lower case letters, digits, '.', '_' or '-' (got {name!r})")
    rank = int(os.environ.get("RANK", "0"))
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
    raw_file = Path(raw_path) if raw_path else Path(out_path).parent / "measurements" / f"{name}-profile-{date}.json"
    if rank == 0:
        check_writable(out_path, force)
        check_writable(raw_file, force)
    specs = [load_model(m).model_dump() for m in models]
    base_hw = load_hardware(base) if base else None

    kernels = load_kernels()
    import torch  # noqa: PLC0415

    prof = importlib.import_module(f"{kernels.__name__}.profiler")
    build = importlib.import_module(f"{kernels.__name__}.profile_build")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device here; use --device cpu")
    if base_hw is None and device == "cuda":
        label = torch.cuda.get_device_name(int(os.environ.get("LOCAL_RANK", "0")))
        guess = build.default_base(device, label)
        if guess is None:
            raise InputError(
                f"--base: no shipped profile for {label!r}; pass --base PROFILE for the datasheet fields "
                "(NVLink, NIC, peaks) a profiler cannot measure"
            )
        base_hw = load_hardware(guess)
    if not specs:
        specs = importlib.import_module(f"{kernels.__name__}.measure_common").load_models()[0]
    opts = prof.ProfileOptions(
        device=device, quick=quick, budget_s=budget_s, models=tuple(specs), tokens=tok, runs=runs, reps=reps,
        warmup=warmup, max_shapes=max_shapes, fp8=not no_fp8,
    )
    ctx = click.get_current_context()
    argv = [a for p in ctx.command.params if (v := ctx.params.get(p.name)) not in (None, False, ())
            for a in ([p.opts[0]] if v is True else
                      [x for item in (v if isinstance(v, tuple) else (v,)) for x in (p.opts[0], str(item))])]
    raw = prof.measure(opts, argv)
    if "provenance" not in raw:  # a torchrun rank other than 0: it only ran the collectives
        return
    raw_label = _display(raw_file)
    data = build.build_profile(raw, name=name, base=base_hw, raw_name=raw_label)
    data = {k: v for k, v in data.items() if v is not None}
    data["pcie"] = {k: v for k, v in data["pcie"].items() if v is not None}
    hw = parse(HardwareProfile, data, Path(out_path).name)
    atomic_write_text(raw_file, json.dumps(raw, indent=1) + "\n")
    atomic_write_text(out_path, dumps_profile(data) + "\n")
    click.echo(f"wrote {out_path} ({len(hw.expert_ffn_tables)} expert-FFN tables) and {raw_label}", err=True)
    summary = {
        "profile": str(out_path), "raw": raw_label, "name": hw.name, "device": hw.measured.device,
        "mode": raw["mode"], "hbm_bandwidth_gbps": hw.hbm_bandwidth_gbps,
        "gemm_tflops_measured": raw["ceilings"]["gemm_TFLOPs"],
        "h2d_pinned_peak_gbps": max(p.gbps for p in hw.pcie.h2d_pinned),
        "copy_latency_us": hw.pcie.copy_latency_us,
        "expert_ffn_tables": [{"d": t.d, "f": t.f, "dtype": t.dtype, "points": len(t.tokens)} for t in hw.expert_ffn_tables],
        "grouped_rows": len(raw["grouped"]["rows"]), "layer_rows": len(raw["layer_ops"]["rows"]),
        "collectives": raw["collectives"].get("note") or f"{len(raw['collectives']['rows'])} sizes",
        "cut_by_budget": raw["cut_by_budget"], "elapsed_s": raw["elapsed_s"],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        click.echo(
            f"{hw.name}: {hw.measured.device}; HBM copy {hw.hbm_bandwidth_gbps:g} GB/s, GEMM "
            f"{summary['gemm_tflops_measured']:.3g} TFLOP/s, H2D pinned up to {summary['h2d_pinned_peak_gbps']:.3g} GB/s, "
            f"{len(hw.expert_ffn_tables)} expert-FFN tables; collectives: {summary['collectives']}"
        )
