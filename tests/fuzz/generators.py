"""Malformed inputs for every loader, as hypothesis strategies; shared by the fuzz tests and
``benchmarks/robustness.py``.

Each strategy draws a :class:`Case`: the bytes of one input file (a mutated real fixture, or
garbage) and how to hand it to its loader. :func:`run_case` writes it to a folder, calls the
loader and classifies what happened:

- ``accepted`` — the loader returned (the follow-up checks of :data:`FOLLOW_UPS` ran too:
  statistics and a save/load round trip for traces, every export for plans);
- ``rejected`` — :class:`~planner.errors.InputError` with a good message: one line, naming
  the file (:func:`message_problem`);
- ``crash`` — any other exception, or an InputError whose message breaks those rules.

Loaders (the keys of :data:`LOADERS`):

==============  ================================================================================
``model``       ModelSpec ``.yaml`` / ``.json`` (mutated ``planner/data/models/*.yaml``): load_model
``hf``          Hugging Face ``config.json`` (mutated ``tests/data/hf/*.json``), as a file or a
                folder holding it: load_model
``hardware``    hardware profile ``.json`` / ``.yaml`` (mutated ``hwprofiles/*.json``): load_hardware
``trace``       ``.npz`` routing trace (per-token or counts; mutated, random arrays, corrupted
                bytes, hand-made zip members): load_trace, sometimes against a model
``sglang``      SGLang ``logical_count`` ``.json``: load_trace
``sglang_pt``   SGLang ``logical_count`` ``.pt`` (needs torch): load_trace
``plan``        ``plan.json`` (mutated ``planner.plan("mixtral-8x7b")``): Plan.load
``sweep``       sweep spec ``.yaml`` / ``.json`` (mutated ``examples/sweep.yaml``): check_spec_file
==============  ================================================================================

Mutations of a JSON/YAML document (:func:`mutated_doc`): delete a field, replace a value with
a nasty one (None, bools, 0, -1, 2**63, 10**300, NaN, ±inf, 1e308, huge or odd strings, nested
garbage), change a value's type, edit a list, add an unknown field, or splice raw text where a
value was (a 5000-digit number, 5000-deep brackets, ``!!python/object/apply``, YAML alias
bombs and cycles, ``2024-13-45`` …); then, sometimes, corrupt the text (truncate, splice
bytes, non-UTF-8, UTF-16, BOM).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import struct
import tempfile
import traceback
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from planner.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
MODEL_SPECS = sorted((ROOT / "planner" / "data" / "models").glob("*.yaml"))
HF_CONFIGS = sorted((ROOT / "tests" / "data" / "hf").glob("*.json"))
HW_PROFILES = [ROOT / "hwprofiles" / "h100-sxm.json", *sorted(
    p for p in (ROOT / "hwprofiles").glob("*.json") if p.name != "h100-sxm.json"
)]
#: Preset a plan is made for, and that traces are sometimes checked against.
PLAN_MODEL = "mixtral-8x7b"

# ---- settings ------------------------------------------------------------------------------


def fuzz_settings(default: int, **kw: Any) -> settings:
    """Hypothesis settings for a fuzz test: ``default`` examples (``FUZZ_EXAMPLES`` overrides),
    no deadline, derandomized (fixed seed, as every test of the project) unless ``FUZZ_RANDOM``
    is set, no example database written into the tree."""
    n = int(os.environ.get("FUZZ_EXAMPLES", default))
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=not os.environ.get("FUZZ_RANDOM"),
        database=None,
        suppress_health_check=list(HealthCheck),
        **kw,
    )


# ---- cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One input: ``content`` written as ``filename`` (inside a folder when ``folder``)."""

    loader: str
    filename: str
    content: bytes
    folder: bool = False
    model: str | None = None  # traces: the preset load_trace checks the trace against
    notes: list[str] = field(default_factory=list)

    def write(self, tmp: Path) -> Path:
        """Write the file under ``tmp``; the path to hand to the loader."""
        if self.folder:
            d = tmp / "Model-Folder"
            d.mkdir()
            (d / self.filename).write_bytes(self.content)
            return d
        p = tmp / self.filename
        p.write_bytes(self.content)
        return p

    def names(self, path: Path) -> list[str]:
        """Strings of which a good error message contains at least one (the file's name)."""
        return [path.name, self.filename] if self.folder else [path.name]


# ---- nasty values --------------------------------------------------------------------------

HUGE_INTS = [2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 10**300]
ODD_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.5, 1.5, 1e19, 2.0**63, 3.0]
ODD_STRINGS = [
    "", " ", "\n", "\r\n", "\t", "null", "None", "NaN", "1e999", "0x10", "-1", "4096", "bf16", "fp8",
    "mha", "gqa", "mla", "softmax", "h100-sxm", "mixtral", "deepseek_v3", "2024-13-45", "\u2028",
    "\x00", "\x1b[31m", "é", "名前", "a" * 5000, "1" * 5000, "../../etc/passwd", "{\"a\": 1}", "[1, 2]",
]
FIELD_NAMES = [
    "name", "model_type", "hidden_size", "num_layers", "num_experts", "top_k", "attention", "kind",
    "vocab_size", "n_routed_experts", "num_hidden_layers", "intermediate_size", "moe_intermediate_size",
    "num_experts_per_tok", "quantization_config", "quant_method", "torch_dtype", "peak_tflops", "bf16",
    "nvlink", "pcie", "measured", "expert_ffn_tables", "schema_version", "placement", "physical_to_logical",
    "parallel", "cache", "predicted", "solver", "provenance", "extra", "__proto__", "", "a.b", "x\ny",
]

#: Mapping keys that are not strings (YAML keeps their type; JSON makes them strings).
ODD_KEYS = [0, -1, 2**64, 10**300, None, 1.5, True, math.inf]

nasty_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 2, -(2**31)] + HUGE_INTS),
    st.integers(-(10**6), 10**6),
    st.sampled_from(ODD_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=20),
)
nasty_values = st.recursive(
    nasty_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


def _deep(depth: int) -> Any:
    v: Any = 1
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


#: Text spliced into a JSON document where a value was.
RAW_JSON = [
    "9" * 5000, "-" + "9" * 4400, "1e99999", "-1e99999", "NaN", "Infinity", "-Infinity", "1.0e-400",
    "18446744073709551616", "-9223372036854775809", "9223372036854775808", "1" + "0" * 300,
    "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, "[" * 70 + "]" * 70,
    '"\\ud800"', '"\\u0000"', '"\\u2028"', "[", "tru", "nul", '"' + "a" * 100000 + '"', "{}", "[]",
    '{"": {"": {"": []}}}', "[1, [2, [3, [4]]]]", "0.1e1", "-0", "1E400", "true", "[[1, 2], [3]]",
]
#: Text spliced into a YAML document where a value was.
RAW_YAML = [
    "!!python/object/apply:os.system ['true']", "!!python/object:planner.specs.model.ModelSpec {}",
    "!!python/name:os.system", "!!python/tuple [1, 2]", "&a [*a]", "&b {k: *b}", "*undefined",
    "2024-13-45", "2024-01-01", "2001-12-14t21:59:43.10-05:00", "!!timestamp 2024-01-01T99:00:00",
    "!!bool maybe", "!!int abc", "!!float x", "!!binary gibberish!", "!!binary aGVsbG8=",
    "0x" + "f" * 5000, "0o" + "7" * 6000, "0b" + "1" * 20000, "9" * 5000, "1_000_000", "0777",
    ".inf", "-.inf", ".nan", "~", "yes", "no", "on", "off", "!!set {a, b}", "!!omap [a]",
    "!!str 5", "!!float 1e400", "!!int 0x" + "f" * 40, "{? [a, b] : 1}", "[" * 5000 + "]" * 5000,
    "[&x [1,1,1,1,1,1,1,1,1], &y [*x,*x,*x,*x,*x,*x,*x,*x,*x], &z [*y,*y,*y,*y,*y,*y,*y,*y,*y],"
    " &w [*z,*z,*z,*z,*z,*z,*z,*z,*z], [*w,*w,*w,*w,*w,*w,*w,*w,*w]]",
    "!<tag:yaml.org,2002:int> 12", "{? 0x" + "f" * 5000 + " : 1}", "{? " + "9" * 5000 + " : 1}", "!custom 1", "%TAG", "'unterminated", "\"\\x\"", "[1, 2",
    "@reserved", "`backtick", "<<: 5", "{<<: *undefined}",
]
#: Bytes spliced into a file's text.
JUNK_BYTES = [b"\xff", b"\xfe\xff", b"\x00", b"\xef\xbb\xbf", b"\r", b"\t", b"\x80\x81", b"\xc3", b"\xed\xa0\x80", b"\n---\n", b"\x1a"]
_MARK = "__FUZZ_RAW_VALUE__"


# ---- document mutations --------------------------------------------------------------------


def _paths(doc: Any) -> list[tuple[Any, ...]]:
    """Every path below the root of a JSON-like document, in a stable order."""
    out: list[tuple[Any, ...]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
    while stack:
        v, p = stack.pop()
        if p:
            out.append(p)
        if isinstance(v, dict):
            stack.extend((x, (*p, k)) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((x, (*p, i)) for i, x in reversed(list(enumerate(v))))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _retyped(draw: Any, v: Any) -> Any:
    options: list[Any] = [str(v)[:200], [v], {"value": v}, None, True, "", 0]
    if isinstance(v, bool):
        options += [int(v), "true"]
    elif isinstance(v, int):
        options += [float(v), v + 0.5, str(v), -v, v * 1000003, 2**63 + v]
    elif isinstance(v, float):
        options += [int(v) if math.isfinite(v) else 0, -v, v * 1e300, math.nan]
    elif isinstance(v, str):
        options += [v.upper(), v + "\n", v * 50, len(v), v[:1]]
    elif isinstance(v, list):
        options += [tuple(v), {str(i): x for i, x in enumerate(v)}, v[:1], v * 3, [v]]
    elif isinstance(v, dict):
        options += [list(v.values()), list(v), {str(k).upper(): x for k, x in v.items()}]
    return draw(st.sampled_from(options))


@st.composite
def mutated_doc(draw: Any, doc: Any, raw: list[str]) -> tuple[Any, str | None, list[str]]:
    """A mutated deep copy of ``doc``, the raw text to splice where :data:`_MARK` is (or None),
    and a note per mutation."""
    doc = copy.deepcopy(doc)
    notes: list[str] = []
    raw_text: str | None = None
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(doc)
        if not paths:
            break
        shallow = [p for p in paths if len(p) <= 2]
        path = draw(st.sampled_from(shallow) if shallow and draw(st.booleans()) else st.sampled_from(paths))
        parent = _get(doc, path[:-1])
        value = parent[path[-1]]
        op = draw(st.sampled_from(["delete", "replace", "retype", "add", "list", "raw", "swap"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            _set(doc, path, draw(nasty_values))
        elif op == "retype":
            _set(doc, path, _retyped(draw, value))
        elif op == "add":
            target = value if isinstance(value, dict) else (parent if isinstance(parent, dict) else doc)
            if isinstance(target, dict):
                key = draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=12) | st.sampled_from(ODD_KEYS))
                target[key] = draw(nasty_values)
        elif op == "list":
            lst = value if isinstance(value, list) else None
            if lst is None:
                _set(doc, path, [value] * draw(st.integers(0, 3)))
            else:
                how = draw(st.sampled_from(["empty", "truncate", "append", "duplicate", "reverse", "nest"]))
                if how == "empty":
                    lst.clear()
                elif how == "truncate" and lst:
                    del lst[draw(st.integers(0, len(lst) - 1)):]
                elif how == "append":
                    lst.append(draw(nasty_values))
                elif how == "duplicate" and lst:
                    lst.append(copy.deepcopy(lst[0]))
                elif how == "reverse":
                    lst.reverse()
                elif how == "nest":
                    _set(doc, path, [lst])
        elif op == "raw" and raw_text is None:
            raw_text = draw(st.sampled_from(raw))
            _set(doc, path, _MARK)
        elif op == "swap":
            other = draw(st.sampled_from(paths))
            if other[: len(path)] != path and path[: len(other)] != other:
                a, b = copy.deepcopy(value), copy.deepcopy(_get(doc, other))
                _set(doc, path, b)
                _set(doc, other, a)
        notes.append(f"{op} {'.'.join(map(str, path))[:60]}")
    return doc, raw_text, notes


def _dump(doc: Any, fmt: str, raw_text: str | None) -> str:
    if fmt == "yaml":
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1_000_000)
        if raw_text is not None:
            text = text.replace(_MARK, raw_text, 1)
    else:
        text = json.dumps(doc, indent=1, allow_nan=True)
        if raw_text is not None:
            text = text.replace(f'"{_MARK}"', raw_text, 1)
    return text


@st.composite
def corrupted(draw: Any, data: bytes) -> tuple[bytes, str | None]:
    """``data``, or a corrupted copy of it and what was done."""
    how = draw(st.sampled_from(["none", "none", "none", "truncate", "splice", "flip", "utf16", "bom", "garbage", "empty"]))
    n = len(data)
    if how == "truncate" and n:
        return data[: draw(st.integers(0, n - 1))], "truncated"
    if how == "splice":
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 16)))
        junk = draw(st.sampled_from(JUNK_BYTES) | st.binary(max_size=16))
        return data[:i] + junk + data[j:], "spliced bytes"
    if how == "flip" and n:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, n - 1))
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out), "flipped bytes"
    if how == "utf16":
        try:
            return data.decode("utf-8").encode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            return data, None
    if how == "bom":
        return b"\xef\xbb\xbf" + data, "bom"
    if how == "garbage":
        return draw(st.binary(max_size=200)), "random bytes"
    if how == "empty":
        return b"", "empty file"
    return data, None


@cache
def _yaml_doc(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def _json_doc(path: Path) -> Any:
    return json.loads(path.read_text())


@st.composite
def _document_case(draw: Any, loader: str, base: Any, fmts: list[str], filename: str, folder: bool = False) -> Case:
    fmt = draw(st.sampled_from(fmts))
    doc, raw_text, notes = draw(mutated_doc(base, RAW_YAML if fmt == "yaml" else RAW_JSON))
    text = _dump(doc, fmt, raw_text)
    content, how = draw(corrupted(text.encode("utf-8", "surrogatepass")))
    if how:
        notes.append(how)
    suffix = ".yaml" if fmt == "yaml" else ".json"
    name = filename if filename.endswith((".json", ".yaml")) else filename + suffix
    return Case(loader, name, content, folder=folder, notes=notes)


@st.composite
def model_cases(draw: Any) -> Case:
    """A ModelSpec file (.yaml or .json) made from a shipped preset."""
    src = draw(st.sampled_from(MODEL_SPECS))
    return draw(_document_case("model", _yaml_doc(src), ["yaml", "yaml", "json"], src.stem))


@st.composite
def hf_cases(draw: Any) -> Case:
    """A Hugging Face config.json made from a real one, as a named file or a model folder."""
    src = draw(st.sampled_from(HF_CONFIGS))
    folder = draw(st.booleans())
    filename = "config.json" if folder else src.name
    return draw(_document_case("hf", _json_doc(src), ["json"], filename, folder=folder))


@st.composite
def hardware_cases(draw: Any) -> Case:
    """A hardware profile (.json or .yaml) made from a shipped one (h100-sxm most often)."""
    src = draw(st.sampled_from([HW_PROFILES[0]] * 3 + HW_PROFILES[1:]))
    return draw(_document_case("hardware", _json_doc(src), ["json", "json", "yaml"], src.stem))


@cache
def plan_doc() -> dict[str, Any]:
    """A real plan, as the JSON mapping of its plan.json."""
    import planner

    return json.loads(planner.plan(PLAN_MODEL).to_json())


@st.composite
def plan_cases(draw: Any) -> Case:
    """A plan.json made from ``planner.plan("mixtral-8x7b")``."""
    return draw(_document_case("plan", plan_doc(), ["json", "json", "json", "yaml"], "plan"))


SWEEP_SPEC = ROOT / "examples" / "sweep.yaml"


@st.composite
def sweep_cases(draw: Any) -> Case:
    """A sweep spec (.yaml or .json) made from ``examples/sweep.yaml``."""
    return draw(_document_case("sweep", _yaml_doc(SWEEP_SPEC), ["yaml", "yaml", "json"], "sweep"))


# ---- traces --------------------------------------------------------------------------------

ODD_DTYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
    "float64", "bool", "complex64", "complex128", "U3", "S3", "datetime64[s]", "timedelta64[s]", "V4",
]


def _npz_bytes(arrays: dict[str, Any], compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


@st.composite
def odd_arrays(draw: Any) -> np.ndarray:
    """Arrays of any dtype and a small shape (0-d and empty included), any values."""
    dtype = draw(st.sampled_from(ODD_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    if dtype == "V4":
        return np.zeros(shape, dtype="V4")
    return draw(hnp.arrays(np.dtype(dtype), shape))


def _valid_ids(rng: np.random.Generator, L: int, T: int, k: int, E: int) -> np.ndarray:
    return np.argsort(rng.random((L, T, E)), axis=-1)[..., :k].astype(np.int64)


@st.composite
def _valid_trace_arrays(draw: Any, for_model: bool) -> dict[str, Any]:
    """A valid per-token or counts trace (small), as the arrays of its .npz file."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if for_model:  # the shape of PLAN_MODEL (mixtral-8x7b): 32 MoE layers, 8 experts, top-2
        L, E, k = 32, 8, 2
    else:
        E = draw(st.integers(1, 12))
        L, k = draw(st.integers(1, 4)), draw(st.integers(1, min(E, 4)))
    T = draw(st.integers(1, 12))
    if draw(st.integers(0, 4)) == 0:
        S = draw(st.integers(1, 4))
        out: dict[str, Any] = {"counts": rng.integers(0, 50, (S, L, E))}
    else:
        out = {"topk_ids": _valid_ids(rng, L, T, k, E)}
        if draw(st.booleans()):
            out["topk_weights"] = rng.random((L, T, k)).astype(draw(st.sampled_from(["float16", "float32", "float64"])))
        if draw(st.booleans()):
            out["step"] = np.sort(rng.integers(0, 4, T))
        if draw(st.booleans()):
            out["source_rank"] = rng.integers(0, 4, T)
    if draw(st.booleans()):
        out["num_experts"] = np.array(E)
    if draw(st.booleans()):
        out["model"] = np.array(draw(st.sampled_from(["m", PLAN_MODEL, "", "x\ny"])))
    return out


_KEYS = ["topk_ids", "topk_weights", "step", "source_rank", "num_experts", "model", "counts"]


@st.composite
def _mutated_trace_arrays(draw: Any, arrays: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    arrays = dict(arrays)
    notes: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(arrays) or ["topk_ids"]))
        op = draw(st.sampled_from([
            "drop", "odd_array", "odd_experts", "out_of_range", "dup", "decrease", "negative",
            "nonfinite", "reshape", "astype", "add_key", "empty", "zero_d", "transpose", "object",
        ]))
        a = arrays.get(key)
        try:  # an operation that does not apply to this array (or dtype) is skipped
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                if op == "drop":
                    arrays.pop(key, None)
                elif op == "odd_array":
                    arrays[key] = draw(odd_arrays())
                elif op == "odd_experts":
                    arrays["num_experts"] = draw(st.sampled_from([
                        np.array(0), np.array(-1), np.array(1), np.array(2**31), np.array(2**40), np.array(65537),
                        np.array(2**64 - 1, dtype=np.uint64), np.array(4.0), np.array(True), np.array([8]),
                        np.array("8"), np.array(8, dtype="timedelta64[s]"), np.array(3, dtype=np.int8),
                    ]))
                elif op == "out_of_range" and isinstance(a, np.ndarray) and a.size and a.dtype.kind in "iu":
                    a = a.astype(np.int64).copy()
                    a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([-1, 8, 12, 2**31, 2**40, -(2**63), 2**63 - 1]))
                    arrays[key] = a
                elif op == "dup" and key == "topk_ids" and isinstance(a, np.ndarray) and a.ndim == 3 and a.shape[2] > 1:
                    a = a.copy()
                    a[..., 1] = a[..., 0]
                    arrays[key] = a
                elif op == "decrease" and isinstance(a, np.ndarray) and a.ndim == 1 and a.size > 1:
                    arrays[key] = a[::-1] - 1
                elif op == "negative" and isinstance(a, np.ndarray) and a.size and a.dtype.kind in "iuf":
                    arrays[key] = -np.abs(a.astype(np.float64 if a.dtype.kind == "f" else np.int64)) - 1
                elif op == "nonfinite" and isinstance(a, np.ndarray) and a.size and a.dtype.kind == "f":
                    a = a.copy()
                    a.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
                    arrays[key] = a
                elif op == "reshape" and isinstance(a, np.ndarray):
                    arrays[key] = a.reshape(-1) if a.ndim != 1 else a.reshape(1, -1)
                elif op == "astype" and isinstance(a, np.ndarray):
                    arrays[key] = a.astype(draw(st.sampled_from(ODD_DTYPES[:-1])))
                elif op == "add_key":
                    arrays[draw(st.sampled_from(_KEYS + ["extra", "arr_0", "x\ny", "a/b"]))] = draw(odd_arrays())
                elif op == "empty":
                    arrays[key] = np.zeros((0,) * max(getattr(a, "ndim", 1), 1), dtype=np.int64)
                elif op == "zero_d":
                    arrays[key] = np.array(draw(st.integers(-3, 70000)))
                elif op == "transpose" and isinstance(a, np.ndarray) and a.ndim >= 2:
                    arrays[key] = np.swapaxes(a, 0, -1)
                elif op == "object":
                    arrays[key] = np.array([{"a": 1}, None], dtype=object)  # saved pickled
        except (ValueError, TypeError, OverflowError, IndexError):
            continue
        notes.append(f"{op} {key}")
    return arrays, notes


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _lying_npy(shape: tuple[int, ...], descr: str = "<i8", payload: bytes = b"\0" * 16, version: tuple[int, int] = (1, 0)) -> bytes:
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
        if version != (2, 0):  # patch the version bytes: a format numpy's reader does not know
            raw = bytearray(buf.getvalue())
            raw[6:8] = bytes(version)
            return bytes(raw) + payload
    return buf.getvalue() + payload


@st.composite
def _crafted_npz(draw: Any) -> tuple[bytes, str]:
    """Zip archives and .npy files made by hand: lying headers, odd members, odd zips."""
    ids = _npy_bytes(np.zeros((1, 2, 1), dtype=np.int64))
    kind = draw(st.sampled_from([
        "lying_huge", "lying_small", "lying_overflow", "version3", "version9", "not_npy_member",
        "no_suffix_member", "single_npy", "empty_zip", "dir_member", "dup_member", "newline_member",
        "bad_deflate", "bad_method", "encrypted", "object_header", "huge_header", "pickle_npy",
    ]))
    if kind == "lying_huge":
        shape = draw(st.sampled_from([(2**20, 2**20, 8), (100000, 100000, 100), (1, 2**40, 1), (2**31, 1, 2)]))
        return _zip([("topk_ids.npy", _lying_npy(shape))]), kind
    if kind == "lying_small":
        return _zip([("topk_ids.npy", _lying_npy((1, 1, 1), payload=b"\0" * 64))]), kind
    if kind == "lying_overflow":
        return _zip([("topk_ids.npy", _lying_npy((2**40, 2**40, 2**40)))]), kind
    if kind == "version3":
        return _zip([("topk_ids.npy", _lying_npy((1, 2, 1), version=(3, 0)))]), kind
    if kind == "version9":
        return _zip([("topk_ids.npy", _lying_npy((1, 2, 1), version=(9, 9)))]), kind
    if kind == "not_npy_member":
        return _zip([("topk_ids.npy", draw(st.binary(max_size=64)))]), kind
    if kind == "no_suffix_member":
        return _zip([("topk_ids", ids)]), kind
    if kind == "single_npy":
        return ids, kind
    if kind == "empty_zip":
        return _zip([]), kind
    if kind == "dir_member":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("sub/", b"")
            z.writestr("topk_ids.npy", ids)
        return buf.getvalue(), kind
    if kind == "dup_member":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z, _quiet_duplicates():
            z.writestr("topk_ids.npy", ids)
            z.writestr("topk_ids.npy", ids)
        return buf.getvalue(), kind
    if kind == "newline_member":
        return _zip([("topk_ids.npy", ids), ("bad\nkey\u2028x.npy", ids)]), kind
    if kind == "bad_deflate":
        data = bytearray(_zip([("topk_ids.npy", ids * 4)], zipfile.ZIP_DEFLATED))
        for i in range(40, min(len(data), 80)):
            data[i] ^= 0x5A
        return bytes(data), kind
    if kind == "bad_method":
        data = bytearray(_zip([("topk_ids.npy", ids)]))
        # compression method field of the local header (offset 8) and the central directory
        data[8:10] = struct.pack("<H", 99)
        cd = data.rfind(b"PK\x01\x02")
        data[cd + 10 : cd + 12] = struct.pack("<H", 99)
        return bytes(data), kind
    if kind == "encrypted":
        data = bytearray(_zip([("topk_ids.npy", ids)]))
        data[6] |= 1
        cd = data.rfind(b"PK\x01\x02")
        data[cd + 8] |= 1
        return bytes(data), kind
    if kind == "object_header":
        return _zip([("topk_ids.npy", _lying_npy((1, 2, 1), descr="|O"))]), kind
    if kind == "huge_header":
        hdr = b"\x93NUMPY\x01\x00" + struct.pack("<H", 65535) + b"{" + b" " * 65534
        return _zip([("topk_ids.npy", hdr)]), kind
    # pickle_npy: a real pickled object array member
    return _zip([("topk_ids.npy", _npy_bytes(np.array([[["x"]]], dtype=object)))]), kind


class _quiet_duplicates:
    def __enter__(self) -> None:
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


@st.composite
def trace_cases(draw: Any) -> Case:
    """A .npz trace: a mutated valid one, random arrays, corrupted bytes or a hand-made zip;
    checked against the model ``mixtral-8x7b`` a third of the time."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "valid", "random", "bytes", "crafted"]))
    model = draw(st.sampled_from([None, None, PLAN_MODEL]))
    notes = [kind]
    if kind == "crafted":
        content, how = draw(_crafted_npz())
        notes.append(how)
    elif kind == "random":
        arrays = draw(st.dictionaries(st.sampled_from(_KEYS + ["extra"]), odd_arrays(), max_size=4))
        content = _npz_bytes(arrays)
        notes.append(",".join(arrays))
    else:
        arrays = draw(_valid_trace_arrays(for_model=model is not None and draw(st.booleans())))
        if kind == "mutated":
            arrays, more = draw(_mutated_trace_arrays(arrays))
            notes += more
        content = _npz_bytes(arrays, compressed=draw(st.booleans()))
        if kind == "bytes":
            content, how = draw(corrupted(content).filter(lambda r: r[1] is not None))
            notes.append(how or "")
    return Case("trace", "trace.npz", content, model=model, notes=notes)


# ---- SGLang logical_count ------------------------------------------------------------------


@st.composite
def _logical_count(draw: Any) -> Any:
    """A logical_count value: a rectangular count array as lists (mutated), or nested garbage."""
    if draw(st.integers(0, 3)) == 0:
        return draw(nasty_values)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(32, 8), (2, 32, 8), (27, 64), (3, 26, 64)]) | hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    arr = rng.integers(0, 100, shape).tolist()
    if draw(st.booleans()) and isinstance(arr, list) and arr:
        what = draw(st.sampled_from(["ragged", "string", "none", "float", "negative", "huge", "bool", "nested", "nan"]))
        row: Any = arr
        while isinstance(row, list) and row and isinstance(row[0], list) and draw(st.booleans()):
            row = row[0]
        if isinstance(row, list) and row:
            if what == "ragged":
                row.pop()
            elif what == "string":
                row[0] = "12"
            elif what == "none":
                row[0] = None
            elif what == "float":
                row[0] = draw(st.sampled_from([1.5, 1e300, 2.0**60, -0.0, 3.0]))
            elif what == "negative":
                row[0] = -1
            elif what == "huge":
                row[0] = draw(st.sampled_from(HUGE_INTS))
            elif what == "bool":
                row[0] = True
            elif what == "nested":
                row[0] = [row[0]]
            elif what == "nan":
                row[0] = draw(st.sampled_from([math.nan, math.inf]))
    return arr


@st.composite
def sglang_cases(draw: Any) -> Case:
    """An SGLang logical_count .json (the file --init-expert-location reads, or a recorder dump)."""
    doc: Any = {"logical_count": draw(_logical_count())}
    for key in draw(st.lists(st.sampled_from(["rank", "average_utilization_rate_over_window", "physical_to_logical_map", "other", "x\ny"]), max_size=2)):
        doc[key] = draw(nasty_values)
    if draw(st.integers(0, 9)) == 0:
        doc = draw(nasty_values)
    doc, raw_text, notes = draw(mutated_doc(doc, RAW_JSON)) if draw(st.booleans()) else (doc, None, [])
    content, how = draw(corrupted(_dump(doc, "json", raw_text).encode("utf-8", "surrogatepass")))
    model = draw(st.sampled_from([None, None, PLAN_MODEL, "deepseek-v2-lite"]))
    return Case("sglang", "expert_load.json", content, model=model, notes=notes + ([how] if how else []))


@st.composite
def sglang_pt_cases(draw: Any) -> Case:
    """An SGLang logical_count .pt: tensors of every dtype and layout, lists, garbage."""
    import torch

    dtypes = [torch.int64, torch.int32, torch.int8, torch.uint8, torch.float32, torch.float16, torch.bfloat16,
              torch.float64, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]
    shape = draw(st.sampled_from([(32, 8), (2, 32, 8), (3,), (), (0, 4), (1, 1, 1, 1)]))
    dtype = draw(st.sampled_from(dtypes))
    values = torch.randint(0, 50, shape) if shape else torch.tensor(7)
    t = values.to(dtype)
    how = draw(st.sampled_from(["plain", "plain", "sparse", "negative", "nan", "noncontig", "list", "nested", "garbage", "bytes", "not_dict"]))
    obj: Any
    if how == "sparse" and t.dim() >= 1 and dtype not in (torch.float8_e4m3fn, torch.float8_e5m2, torch.bool, torch.complex64):
        t = t.to_sparse()
    elif how == "negative" and dtype.is_signed and t.numel():
        t = t.clone()
        t.view(-1)[0] = -3
    elif how == "nan" and dtype.is_floating_point and t.numel():
        t = t.to(torch.float32)
        t.view(-1)[0] = float("nan")
    elif how == "noncontig" and t.dim() >= 2:
        t = t.transpose(0, -1)
    obj = {"logical_count": t}
    if how == "list":
        obj = {"logical_count": [[1, 2], [3]]}
    elif how == "nested":
        obj = {"logical_count": {"a": t}, "rank": torch.tensor(0)}
    elif how == "not_dict":
        obj = draw(st.sampled_from([[t], t, 5, "logical_count"]))
    buf = io.BytesIO()
    torch.save(obj, buf)
    content = buf.getvalue()
    if how == "garbage":
        content = draw(st.binary(max_size=64))
    elif how == "bytes":
        content, _ = draw(corrupted(content))
    return Case("sglang_pt", "expert_load.pt", content, model=draw(st.sampled_from([None, PLAN_MODEL])), notes=[how, str(dtype)])


# ---- running a case ------------------------------------------------------------------------


def _load_model(path: Path, case: Case) -> Any:
    from planner.specs.model_io import load_model

    return load_model(str(path))


def _load_hardware(path: Path, case: Case) -> Any:
    from planner.specs.hardware import load_hardware

    return load_hardware(str(path))


def _load_trace(path: Path, case: Case) -> Any:
    from planner.specs.model_io import load_model
    from planner.traces import load_trace

    model = load_model(case.model) if case.model else None
    return load_trace(path, model=model)


def _load_plan(path: Path, case: Case) -> Any:
    from planner.specs.plan import Plan

    return Plan.load(path)


def _load_sweep(path: Path, case: Case) -> Any:
    from planner.specs.sweep import check_spec_file

    return check_spec_file(path)


LOADERS: dict[str, Callable[[Path, Case], Any]] = {
    "model": _load_model,
    "hf": _load_model,
    "hardware": _load_hardware,
    "trace": _load_trace,
    "sglang": _load_trace,
    "sglang_pt": _load_trace,
    "plan": _load_plan,
    "sweep": _load_sweep,
}

STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "model": model_cases,
    "hf": hf_cases,
    "hardware": hardware_cases,
    "trace": trace_cases,
    "sglang": sglang_cases,
    "sglang_pt": sglang_pt_cases,
    "plan": plan_cases,
    "sweep": sweep_cases,
}


def _trace_follow_up(obj: Any, tmp: Path) -> None:
    """An accepted trace summarises, saves and loads back the same."""
    from planner.traces import Trace, load_trace, save_trace, trace_stats

    trace_stats(obj)
    out = tmp / "roundtrip.npz"
    save_trace(obj, out)
    back = load_trace(out)
    if isinstance(obj, Trace):
        assert np.array_equal(back.topk_ids, obj.topk_ids) and np.array_equal(back.step, obj.step)
    else:
        assert np.array_equal(back.counts_per_step(), obj.counts_per_step())


def _plan_follow_up(obj: Any, tmp: Path) -> None:
    """An accepted plan exports to every format (or refuses with an InputError)."""
    from planner.exports import FORMATS, export

    for fmt in FORMATS:
        try:
            export(obj, fmt)
        except InputError as e:
            problem = message_problem(str(e), [])
            assert problem is None, f"export {fmt}: {problem}: {e}"


def _sweep_follow_up(obj: Any, tmp: Path) -> None:
    """An accepted spec expands into its combinations, their keys and the CSV header."""
    from planner.sweep import columns, tasks

    if obj.size <= 10_000:
        assert len(tasks(obj, tmp)) == obj.size
    columns(obj)


#: Checks run on what a loader accepted: they too may only raise InputError.
FOLLOW_UPS: dict[str, Callable[[Any, Path], None]] = {
    "trace": _trace_follow_up,
    "sglang": _trace_follow_up,
    "sglang_pt": _trace_follow_up,
    "plan": _plan_follow_up,
    "sweep": _sweep_follow_up,
}

#: The CLI command that reads a loader's file first: a rejected file must exit 2 with one line.
CLI_ARGS: dict[str, Callable[[Path, Path], list[str]]] = {
    "model": lambda p, tmp: ["plan", "--dry-run", "--model", str(p)],
    "hf": lambda p, tmp: ["plan", "--dry-run", "--model", str(p)],
    "hardware": lambda p, tmp: ["plan", "--dry-run", "--hardware", str(p)],
    "trace": lambda p, tmp: ["trace", "stats", str(p)],
    "sglang": lambda p, tmp: ["trace", "stats", str(p)],
    "sglang_pt": lambda p, tmp: ["trace", "stats", str(p)],
    "plan": lambda p, tmp: ["export", "--plan", str(p), "--to", "eplb", "--out", str(tmp / "eplb.npz")],
    "sweep": lambda p, tmp: ["sweep", str(p), "--out", str(tmp / "sweep-out"), "--jobs", "1"],
}

#: Longest acceptable error message (a message must stay readable on one terminal line or two).
MAX_MESSAGE = 600


def message_problem(msg: str, names: list[str]) -> str | None:
    """What is wrong with an InputError message, or None: it must be one non-empty line, of
    bounded length, naming the file (one of ``names``; empty: not checked)."""
    if not msg.strip():
        return "empty message"
    if len(msg.splitlines()) != 1 or "\n" in msg or "\r" in msg:
        return "more than one line"
    if len(msg) > MAX_MESSAGE:
        return f"{len(msg)} characters long"
    if names and not any(n in msg for n in names):
        return f"does not name the file ({' or '.join(names)})"
    return None


@dataclass
class Outcome:
    """What a loader did with a case: ``kind`` is accepted, rejected or crash."""

    kind: str
    message: str = ""
    path: Path | None = None


CliRunner = Callable[[list[str]], tuple[int, str, str]]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``planner.cli.main(argv)`` with stdout and stderr captured: (exit code, stdout, stderr)."""
    import contextlib

    from planner.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def cli_problem(case: Case, path: Path, tmp: Path, cli: CliRunner) -> str | None:
    """Run the command that reads ``case``'s file first (:data:`CLI_ARGS`) on a file its loader
    rejected: it must exit 2 with exactly one stderr line, ``error: …`` naming the file."""
    argv = CLI_ARGS[case.loader](path, tmp)
    try:
        rc, _out, err = cli(argv)
    except BaseException as e:  # noqa: BLE001 - a traceback out of main() is the failure looked for
        return f"CLI {' '.join(argv[:2])}: {type(e).__name__}: {e}"[:300] + "\n" + traceback.format_exc()
    lines = [line for line in err.splitlines() if line.strip()]
    if rc != 2:
        return f"CLI {' '.join(argv[:2])}: exit {rc}, expected 2; stderr {err[:300]!r}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"CLI {' '.join(argv[:2])}: stderr is not one 'error: ' line: {err[:300]!r}"
    problem = message_problem(lines[0], case.names(path))
    return f"CLI {' '.join(argv[:2])}: {problem}: {lines[0][:300]!r}" if problem else None


def run_case(case: Case, cli: CliRunner | None = None) -> Outcome:
    """Write ``case`` to a fresh folder, load it, run the follow-up checks, and (with ``cli``)
    the command line on a rejected file; classify (module docstring)."""
    with tempfile.TemporaryDirectory() as own:
        tmp = Path(own)
        path = case.write(tmp)
        try:
            obj = LOADERS[case.loader](path, case)
        except InputError as e:
            msg = str(e)
            problem = message_problem(msg, case.names(path))
            if problem:
                return Outcome("crash", f"bad InputError message ({problem}): {msg[:300]!r}", path)
            if cli is not None and case.model is None:
                problem = cli_problem(case, path, tmp, cli)
                if problem:
                    return Outcome("crash", problem, path)
            return Outcome("rejected", msg, path)
        except Exception as e:  # noqa: BLE001 - the point: any other exception is a crash
            return Outcome("crash", f"{type(e).__name__}: {e}"[:300] + "\n" + traceback.format_exc(), path)
        follow = FOLLOW_UPS.get(case.loader)
        if follow is not None:
            try:
                follow(obj, tmp)
            except InputError as e:
                problem = message_problem(str(e), [])
                if problem:
                    return Outcome("crash", f"follow-up: bad InputError message ({problem}): {str(e)[:300]!r}", path)
            except Exception as e:  # noqa: BLE001
                return Outcome("crash", f"follow-up {type(e).__name__}: {e}"[:300] + "\n" + traceback.format_exc(), path)
        return Outcome("accepted", "", path)


def describe(case: Case) -> str:
    """One line saying what a case is (for failure reports)."""
    head = case.content[:120]
    return f"{case.loader} {case.filename} model={case.model} notes={case.notes} bytes={len(case.content)} head={head!r}"
