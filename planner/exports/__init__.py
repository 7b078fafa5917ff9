"""Engine exports: hand a plan's placement to SGLang, vLLM, vllm-ascend, DeepSeek EPLB or Megatron.

===============  ======================  ========================================================
``to``           file                    content (module)
===============  ======================  ========================================================
``sglang``       ``.json`` / ``.pt``     ``--init-expert-location``: ``physical_to_logical_map``
                                         [num_hidden_layers, P], dense layers included
                                         (:mod:`~planner.exports.sglang`)
``vllm``         ``.pt`` / ``.npz``      ``EplbState``'s ``physical_to_logical_map`` [MoE layers,
                                         P], what ``update_mapping`` takes (:mod:`~planner.exports.vllm`)
``vllm-ascend``  ``.json``               ``{"moe_layer_count", "layer_list": [...]}`` expert map
                                         (:mod:`~planner.exports.vllm`)
``eplb``         ``.pt`` / ``.npz``      ``phy2log``, ``log2phy``, ``logcnt`` as DeepSeek EPLB
                                         returns them (:mod:`~planner.exports.eplb`)
``megatron``     ``.json`` / ``.txt``    parallelism arguments and the expert permutation
                                         (:mod:`~planner.exports.megatron`)
===============  ======================  ========================================================

:func:`export` builds the whole payload and encodes it in memory before anything is written;
the file is then written atomically (temporary file, rename) and never overwrites an existing
one unless ``force``. :func:`import_placement` reads any of these files back as the placement it
encodes (``phy2log`` [MoE layers, P] and the slots per GPU), so an export can be checked by a
round trip.

The package is named ``exports`` so that ``planner.export`` stays the function (docs/contracts.md's
API: ``planner.export(plan, to=...)``) even after this package is imported.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from planner.errors import InputError
from planner.exports import eplb, megatron, sglang, vllm
from planner.exports._common import ImportedPlacement
from planner.io import atomic_write_bytes, check_writable
from planner.specs.model import ModelSpec
from planner.specs.model_io import load_model
from planner.specs.plan import Plan

__all__ = ["FORMATS", "ExportResult", "ImportedPlacement", "export", "import_placement"]


class _Format(NamedTuple):
    build: Callable[[Plan], dict[str, Any]]
    flags: Callable[[Plan, Any], list[str]]
    notes: Callable[[Plan], list[str]]
    dumps: Callable[[dict[str, Any], Path], bytes]
    load: Callable[..., ImportedPlacement]
    suffixes: tuple[str, ...]
    what: str


_FORMATS: dict[str, _Format] = {
    "sglang": _Format(sglang.build, sglang.flags, sglang.notes, sglang.dumps, sglang.load, sglang.SUFFIXES,
                      "SGLang --init-expert-location file"),
    "vllm": _Format(vllm.build, vllm.flags, vllm.notes, vllm.dumps, vllm.load, vllm.SUFFIXES,
                    "vLLM EPLB physical_to_logical_map"),
    "vllm-ascend": _Format(vllm.build_ascend, vllm.flags_ascend, vllm.notes_ascend, vllm.dumps_ascend,
                           vllm.load_ascend, vllm.ASCEND_SUFFIXES, "vllm-ascend expert map"),
    "eplb": _Format(eplb.build, eplb.flags, eplb.notes, eplb.dumps, eplb.load, eplb.SUFFIXES,
                    "DeepSeek EPLB maps"),
    "megatron": _Format(megatron.build, megatron.flags, megatron.notes, megatron.dumps, megatron.load,
                        megatron.SUFFIXES, "Megatron-core arguments"),
}

#: Names accepted by ``to`` / ``fmt``.
FORMATS: tuple[str, ...] = tuple(_FORMATS)

#: Engine each format's flags are for (what the CLI prints before them).
ENGINE_COMMAND = {
    "sglang": "python -m sglang.launch_server",
    "vllm": "vllm serve",
    "vllm-ascend": "vllm serve",
    "eplb": "",
    "megatron": "pretrain_gpt.py",
}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` produced.

    ``to`` the format name; ``path`` the file written (``None``: nothing written); ``payload``
    the file's content (numpy arrays, or JSON-able objects); ``flags`` the engine arguments to
    pass with the file; ``notes`` caveats the user should read; ``description`` what the file is.
    """

    to: str
    path: Path | None
    payload: dict[str, Any]
    flags: list[str]
    notes: list[str]
    description: str

    @property
    def command_line(self) -> str:
        """The flags, shell-quoted."""
        return shlex.join(self.flags)

    def shapes(self) -> dict[str, list[int]]:
        """Shape of each array of the payload (formats made of arrays)."""
        return {k: list(v.shape) for k, v in self.payload.items() if hasattr(v, "shape")}


def _format(name: str) -> _Format:
    try:
        return _FORMATS[name]
    except KeyError:
        raise InputError(f"to must be one of {', '.join(FORMATS)} (got {name!r})", field="to") from None


def _plan(plan: Plan | str | Path) -> Plan:
    return plan if isinstance(plan, Plan) else Plan.load(plan)


def export(
    plan: Plan | str | Path,
    to: str,
    out: str | Path | None = None,
    *,
    force: bool = False,
) -> ExportResult:
    """Export ``plan`` (a :class:`~planner.specs.plan.Plan` or a plan file) for engine ``to``.

    With ``out`` the file is written atomically (its suffix picks the encoding: see the module
    table); an existing file is refused unless ``force``. Without ``out`` nothing is written and
    the payload is returned. Raises :class:`~planner.errors.InputError` for a bad plan, format
    or suffix, or a ``.pt`` file without torch — before anything is written.
    """
    fmt = _format(to)
    p = _plan(plan)
    path = Path(out) if out is not None else None
    if path is not None:
        suffix = path.suffix.lower()
        if suffix not in fmt.suffixes:
            raise InputError(
                f"{path.name}: `to` {to} writes {' or '.join(fmt.suffixes)} files (got {suffix or 'no suffix'!r})",
                mentions=("to",),
            )
        if path.is_dir():
            raise InputError(f"{path}: is a folder; `out` takes a file name", mentions=("out",))
        check_writable(path, force)
    payload = fmt.build(p)
    result = ExportResult(
        to=to,
        path=path,
        payload=payload,
        flags=fmt.flags(p, path),
        notes=fmt.notes(p),
        description=fmt.what,
    )
    if path is not None:
        data = fmt.dumps(payload, path)  # everything encoded before the first byte is written
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise InputError(f"{path}: cannot write ({e.strerror or e.__class__.__name__})") from None
    return result


def import_placement(
    path: str | Path,
    fmt: str,
    *,
    model: ModelSpec | str | None = None,
    ep: int | None = None,
) -> ImportedPlacement:
    """Read an exported file back as the placement it encodes.

    Returns :class:`ImportedPlacement` (``phy2log_LP`` int64 [MoE layers, P], ``slots_per_gpu``).
    ``model`` (a spec or preset name) checks layer and expert counts and, for SGLang, picks the
    MoE rows out of a map over all hidden layers. ``ep`` gives the EP ranks for the formats that
    do not record them (``sglang``, ``vllm``, ``eplb``; ``slots_per_gpu`` is ``None`` without it)
    and is checked against the file for the others.
    """
    f = _format(fmt)
    spec = None
    if model is not None:
        spec = model if isinstance(model, ModelSpec) else load_model(model)
    return f.load(path, model=spec, ep=ep)
