"""Where ModelSpecs come from: shipped presets, Hugging Face ``config.json`` files, spec files.

- :data:`PRESETS` / :func:`load_preset` — the YAML files under ``planner/data/models/``, one per
  preset, named after it (presets are data; each file cites the published config it copies).
- :func:`planner.specs.hf_config.from_hf_config` — a Hugging Face ``config.json`` (already read
  into a dict) of one of the families it knows; every HF field is checked there.
- :func:`load_model` — what ``--model`` accepts: a preset name, a ``config.json`` (or a folder
  holding one), a ModelSpec ``.json``, or a ModelSpec ``.yaml``/``.yml``.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

from planner.errors import InputError
from planner.specs.base import parse, path_kind, read_mapping, show
from planner.specs.hf_config import HF_MODEL_TYPES, from_hf_config
from planner.specs.model import ModelSpec

__all__ = ["HF_MODEL_TYPES", "PRESETS", "from_hf_config", "load_model", "load_preset"]

_PRESET_DIR = Path(__file__).resolve().parent.parent / "data" / "models"


def _discover_presets() -> list[str]:
    return sorted(p.stem for p in _PRESET_DIR.glob("*.yaml"))


#: Names of the shipped model presets (the stems of ``planner/data/models/*.yaml``), sorted.
PRESETS: list[str] = _discover_presets()


def _unknown_model(name: str) -> InputError:
    hint = difflib.get_close_matches(name.lower(), PRESETS, n=1)
    did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
    return InputError(
        f"unknown model {show(name)}; known presets: {', '.join(PRESETS)} "
        f"(or give a path to a config.json or a ModelSpec .yaml/.json file){did_you_mean}"
    )


@cache
def load_preset(name: str) -> ModelSpec:
    """The shipped preset ``name`` (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise _unknown_model(name)
    path = _PRESET_DIR / f"{name}.yaml"
    return parse(ModelSpec, read_mapping(path), f"preset {path.name}")


def load_model(arg: str) -> ModelSpec:
    """What ``--model`` accepts.

    - a preset name (one of :data:`PRESETS`);
    - a ``*.json`` file: a Hugging Face config when it has ``model_type``, else a ModelSpec;
    - a folder holding ``config.json`` (a downloaded Hugging Face snapshot);
    - a ``*.yaml`` / ``*.yml`` file: a ModelSpec.
    """
    if not isinstance(arg, str) or not arg.strip():
        raise InputError("model: expected a preset name or a file path (got an empty value)", field="model")
    if arg.lower() in PRESETS:
        return load_preset(arg.lower())
    path = Path(arg)
    kind = path_kind(path)
    if kind == "dir":
        if path_kind(path / "config.json") != "file":
            raise InputError(f"{arg}: a folder without config.json (expected a Hugging Face model folder)")
        path = path / "config.json"
        source = str(path)
    else:
        source = arg
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = read_mapping(path)
        if "model_type" in data:
            return from_hf_config(data, source)
        return parse(ModelSpec, data, source)
    if suffix in (".yaml", ".yml"):
        return parse(ModelSpec, read_mapping(path), source)
    if kind is not None:
        raise InputError(f"{arg}: unsupported file type '{path.suffix}' (expected .json, .yaml or .yml)")
    if suffix or "/" in arg or "\\" in arg:
        raise InputError(f"{arg}: no such file")
    raise _unknown_model(arg)
