"""One test per crash the fuzzers found, on the exact kind of input that triggered it.

Each input made a loader raise something other than InputError (RecursionError, ValueError,
KeyError, TypeError, AttributeError, MemoryError, OSError), exhaust memory, wrap a value
silently, or print more than one line; each now gives one InputError line naming the file.
"""

from __future__ import annotations

import io
import json
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import planner
from planner.cli import main
from planner.errors import InputError
from planner.specs.hardware import load_hardware
from planner.specs.model import MAX_EXPERTS
from planner.specs.model_io import load_model
from planner.specs.plan import Plan
from planner.traces import Trace, load_trace, trace_stats
from planner.traces.stats import MAX_PAIR_EXPERTS
from tests.fuzz.generators import HF_CONFIGS, HW_PROFILES, MODEL_SPECS, message_problem

MIXTRAL_HF = next(p for p in HF_CONFIGS if p.name == "mixtral-8x7b.json")
QWEN_SPEC = next(p for p in MODEL_SPECS if p.stem == "qwen3-30b-a3b")


def _error(fn, *args, **kw) -> str:
    """The InputError message of ``fn(*args)``, checked to be one line."""
    with pytest.raises(InputError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert message_problem(msg, []) is None, msg
    return msg


def _hf(**over) -> dict:
    cfg = json.loads(MIXTRAL_HF.read_text())
    cfg.update(over)
    return cfg


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _member_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return path


IDS = np.array([[[0, 1], [2, 3]]])


# ---- JSON and YAML text (read_mapping / parse_text: every file loader) ----------------------


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000],
    ids=["brackets", "objects"],
)
def test_deeply_nested_json_was_a_recursion_error(tmp_path, text):
    p = _write(tmp_path / "spec.json", text)
    assert "spec.json: nested too deeply" in _error(load_model, str(p))
    h = _write(tmp_path / "hw.json", text)
    assert "hw.json: nested too deeply" in _error(load_hardware, str(h))
    c = _write(tmp_path / "load.json", '{"logical_count": ' + text + "}")
    assert "load.json: nested too deeply" in _error(load_trace, c)


def test_deeply_nested_yaml_was_a_recursion_error(tmp_path):
    p = _write(tmp_path / "spec.yaml", "[" * 100_000 + "]" * 100_000)
    assert "spec.yaml: nested too deeply" in _error(load_model, str(p))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_integer_of_5000_digits_was_a_value_error(tmp_path, suffix):
    sep = '"hidden_size": ' if suffix == ".json" else "hidden_size: "
    body = f'{{"name": "x", {sep}{"9" * 5000}}}' if suffix == ".json" else f"name: x\n{sep}{'9' * 5000}\n"
    p = _write(tmp_path / f"spec{suffix}", body)
    msg = _error(load_model, str(p))
    assert msg.startswith(f"spec{suffix}: invalid ") and "4300 digits" in msg


@pytest.mark.parametrize(
    "value, why",
    [
        ("2024-13-45", "month must be in 1..12"),  # ValueError from datetime
        ("!!int abc", "invalid literal"),  # ValueError from int()
        ("!!float x", "could not convert"),
        ("!!bool maybe", "maybe"),  # KeyError
        ("!!timestamp 2024-01-01T99:00:00", "hour must be in 0..23"),
    ],
)
def test_yaml_values_a_constructor_refuses(tmp_path, value, why):
    p = _write(tmp_path / "spec.yaml", f"name: x\nhidden_size: {value}\n")
    msg = _error(load_model, str(p))
    assert msg.startswith("spec.yaml: invalid YAML (") and why in msg


def test_yaml_python_tags_never_run(tmp_path):
    marker = tmp_path / "ran"
    p = _write(tmp_path / "spec.yaml", f"name: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n")
    assert "spec.yaml: invalid YAML at line 1" in _error(load_model, str(p))
    assert not marker.exists()


def test_yaml_alias_bomb_and_cycle_are_quick(tmp_path):
    bomb = (
        "name: x\nextra_dense_layers: [&a [1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a],"
        " &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c],"
        " &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e],"
        " [*f,*f,*f,*f,*f,*f,*f,*f,*f]]\n"
    )
    for name, text in (("bomb.yaml", bomb), ("cycle.yaml", "name: &a [*a]\n"), ("plan.yaml", "schema_version: &a [*a]\n")):
        p = _write(tmp_path / name, text)
        t = time.perf_counter()
        _error(Plan.load if name == "plan.yaml" else load_model, str(p))
        assert time.perf_counter() - t < 2.0, name


def test_alias_chains_deeper_than_the_bound(tmp_path):
    lines = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 200)]
    p = _write(tmp_path / "spec.yaml", "\n".join(lines) + "\n")
    assert "spec.yaml: nested more than 64 levels deep" in _error(load_model, str(p))


@pytest.mark.parametrize(
    "text, field",
    [
        ("name: x\nhidden_size: 0x" + "f" * 40 + "\n", "hidden_size"),  # hex ints have no digit limit
        ('{"name": "x", "num_experts": 100000000000000000000000000000}', "num_experts"),
    ],
)
def test_integers_beyond_64_bits_name_their_field(tmp_path, text, field):
    p = _write(tmp_path / ("spec.yaml" if text.startswith("name") else "spec.json"), text)
    msg = _error(load_model, str(p))
    assert f": {field}: " in msg and "outside the signed 64-bit range" in msg


def test_hf_float_of_1e308_was_a_1024_bit_integer(tmp_path):
    p = _write(tmp_path / "config.json", json.dumps(_hf(hidden_size=1e308)))
    assert "hidden_size must fit in 64 bits" in _error(load_model, str(p))


@pytest.mark.parametrize(
    "over, shows",
    [
        ({"quantization_config": {"quant_method": "bits\nand\nbytes"}}, "'bits\\nand\\nbytes'"),
        ({"model_type": "m" * 10_000}, "model_type 'mmmm"),
        ({"torch_dtype": "x" * 10_000}, "torch_dtype must be one of"),
    ],
)
def test_hf_messages_stay_one_short_line(tmp_path, over, shows):
    p = _write(tmp_path / "config.json", json.dumps(_hf(**over)))
    msg = _error(load_model, str(p))
    assert shows in msg and len(msg) < 400


def test_field_names_with_line_breaks_stay_on_one_line(tmp_path):
    doc = yaml.safe_load(QWEN_SPEC.read_text())
    doc["bad\nfield\u2028x"] = 1
    p = _write(tmp_path / "spec.json", json.dumps(doc))
    assert "unknown field 'bad field x'" in _error(load_model, str(p))


def test_a_whole_model_rule_is_not_labelled_root(tmp_path):
    doc = yaml.safe_load(QWEN_SPEC.read_text()) | {"top_k": 500}
    p = _write(tmp_path / "spec.yaml", yaml.safe_dump(doc))
    msg = _error(load_model, str(p))
    assert "(root)" not in msg and "top_k (500) must be <= num_experts (128)" in msg


@pytest.mark.parametrize("loader", [load_model, load_hardware, Plan.load, load_trace])
def test_file_name_too_long_was_an_os_error(loader):
    arg = "a" * 5000 + (".npz" if loader is load_trace else ".json")
    assert "no such file" in _error(loader, arg)


def test_a_folder_is_not_a_file(tmp_path):
    (tmp_path / "profile.json").mkdir()
    assert "is a folder, not a file" in _error(load_hardware, str(tmp_path / "profile.json"))


# ---- model and plan sizes --------------------------------------------------------------------


def test_num_experts_is_bounded(tmp_path):
    doc = yaml.safe_load(QWEN_SPEC.read_text()) | {"num_experts": 10**9}
    p = _write(tmp_path / "spec.yaml", yaml.safe_dump(doc))
    assert f"num_experts: Input should be less than or equal to {MAX_EXPERTS}" in _error(load_model, str(p))
    c = _write(tmp_path / "config.json", json.dumps(_hf(num_local_experts=10**9)))
    assert f"num_local_experts must be <= {MAX_EXPERTS}" in _error(load_model, str(c))


def test_plan_with_a_billion_experts_exhausted_memory(tmp_path):
    """Plan's validator built set(range(num_experts)): 10**9 experts took every byte of RAM."""
    doc = json.loads(planner.plan("mixtral-8x7b").to_json())
    doc["model"]["num_experts"] = 10**9
    p = _write(tmp_path / "plan.json", json.dumps(doc))
    t = time.perf_counter()
    assert "plan.json: model.num_experts: Input should be less than or equal to" in _error(Plan.load, p)
    assert time.perf_counter() - t < 2.0


def test_plan_schema_version_of_any_size_prints_short(tmp_path):
    doc = json.loads(planner.plan("mixtral-8x7b").to_json())
    doc["schema_version"] = ["x" * 1000] * 1000
    p = _write(tmp_path / "plan.json", json.dumps(doc))
    assert len(_error(Plan.load, p)) < 200


# ---- .npz traces -----------------------------------------------------------------------------


def test_member_that_is_not_npy_was_an_attribute_error(tmp_path):
    for name in ("topk_ids.npy", "topk_ids"):
        p = _member_zip(tmp_path / "t.npz", [(name, b"garbage")])
        assert "t.npz: not a readable .npz file (member" in _error(load_trace, p)


def _lying(shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


@pytest.mark.parametrize("shape", [(100_000, 100_000, 100), (2**20, 2**20, 8), (2**40, 2**40, 2**40)])
def test_header_claiming_terabytes_was_a_memory_error(tmp_path, shape):
    p = _member_zip(tmp_path / "t.npz", [("topk_ids.npy", _lying(shape))])
    msg = _error(load_trace, p)
    assert msg.startswith("t.npz: not a readable .npz file (topk_ids: holds 16 bytes, but its header says shape (")


def test_timedelta_ids_and_num_experts_were_type_errors(tmp_path):
    td = np.array([[[1, 2]]], dtype="timedelta64[s]")
    assert "topk_ids must hold integers, got dtype timedelta64[s]" in _error(load_trace, _npz(tmp_path / "a.npz", topk_ids=td))
    ne = np.array(4, dtype="timedelta64[s]")
    assert "num_experts must be an integer" in _error(load_trace, _npz(tmp_path / "b.npz", topk_ids=IDS, num_experts=ne))


@pytest.mark.parametrize("key", ["step", "source_rank"])
def test_uint64_beyond_int64_was_wrapped_negative(tmp_path, key):
    arr = np.array([0, 2**64 - 1], dtype=np.uint64)
    p = _npz(tmp_path / "t.npz", topk_ids=IDS, num_experts=np.array(4), **{key: arr})
    assert f"{key} values must fit in int64" in _error(load_trace, p)
    c = _npz(tmp_path / "c.npz", counts=np.full((1, 1, 2), 2**64 - 1, dtype=np.uint64))
    assert "counts values must fit in int64" in _error(load_trace, c)


@pytest.mark.parametrize("num_experts", [2**40, 2**64 - 1, MAX_EXPERTS + 1])
def test_num_experts_beyond_the_bound(tmp_path, num_experts):
    """2**40 experts loaded, then ids wrapped to int32 and statistics allocated E-sized tables."""
    dtype = np.uint64 if num_experts >= 2**63 else np.int64
    p = _npz(tmp_path / "t.npz", topk_ids=IDS, num_experts=np.array(num_experts, dtype=dtype))
    assert f"num_experts must be <= {MAX_EXPERTS}" in _error(load_trace, p)
    q = _npz(tmp_path / "q.npz", topk_ids=IDS + 2**33)  # no num_experts: inferred from the ids
    assert f"topk_ids values must be < {MAX_EXPERTS}" in _error(load_trace, q)


def test_pickled_arrays_are_never_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([Boom()], dtype=object), allow_pickle=True)
    p = _member_zip(tmp_path / "t.npz", [("topk_ids.npy", buf.getvalue())])
    assert "topk_ids holds Python objects" in _error(load_trace, p)
    assert not marker.exists()
    raw = _write(tmp_path / "p.npz", pickle.dumps(Boom()))
    assert "p.npz: not a readable .npz file" in _error(load_trace, raw)
    assert not marker.exists()


def test_member_names_with_line_breaks_stay_on_one_line(tmp_path):
    ids = io.BytesIO()
    np.lib.format.write_array(ids, IDS)
    p = _member_zip(tmp_path / "t.npz", [("topk_ids.npy", ids.getvalue()), ("bad\nkey\u2028x.npy", ids.getvalue())])
    assert "unknown keys bad key x" in _error(load_trace, p)


def test_statistics_of_a_tiny_file_with_many_experts_and_steps(tmp_path):
    """1000 one-token steps over 65536 experts: trace stats built [S, L, E] counts (2 GB) and
    [E, E] pair tables (34 GB); now memory follows the trace's size."""
    ids = (np.arange(1000) % 7).reshape(1, 1000, 1).repeat(4, axis=0)
    t = Trace(ids, MAX_EXPERTS, step=np.arange(1000))
    start = time.perf_counter()
    s = trace_stats(t)
    assert time.perf_counter() - start < 5.0
    assert "pair statistics need" in s["unavailable"]["coactivation"] and s["num_steps"] == 1000
    assert MAX_PAIR_EXPERTS < MAX_EXPERTS


# ---- SGLang statistics -----------------------------------------------------------------------


def test_sglang_json_numbers_beyond_64_bits(tmp_path):
    p = _write(tmp_path / "load.json", '{"logical_count": [[100000000000000000000000000000, 1]]}')
    assert "load.json: logical_count[0][0]: 100000000000000000000000000000 is outside" in _error(load_trace, p)
    q = _write(tmp_path / "big.json", '{"logical_count": [[1e300, 1]]}')
    assert "logical_count values must be <= 2**53" in _error(load_trace, q)


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2", "sparse"])
def test_sglang_pt_tensors_numpy_cannot_hold(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    t = torch.tensor([[1, 2], [3, 4]])
    t = t.to_sparse() if dtype == "sparse" else t.to(getattr(torch, dtype))
    p = tmp_path / "load.pt"
    torch.save({"logical_count": t}, p)
    tr = load_trace(p)
    assert tr.counts().tolist() == [[1, 2], [3, 4]]


def test_sglang_pt_pickles_never_run(tmp_path):
    pytest.importorskip("torch")
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    p = _write(tmp_path / "load.pt", pickle.dumps({"logical_count": Boom()}, protocol=4))
    assert "load.pt: not a readable torch file" in _error(load_trace, p)
    assert not marker.exists()


def test_sglang_pt_torch_warnings_do_not_add_lines(tmp_path, capsys):
    pytest.importorskip("torch")
    p = _write(tmp_path / "load.pt", pickle.dumps({"logical_count": [[1, 2]]}, protocol=4))
    assert main(["trace", "stats", str(p)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: load.pt: not a readable torch file"), err


def test_sglang_key_with_line_breaks(tmp_path):
    p = _write(tmp_path / "load.json", json.dumps({"a\nb": 1, "c": 2}))
    assert "missing key 'logical_count' (found: a b, c)" in _error(load_trace, p)


# ---- the command line: one stderr line -------------------------------------------------------


@pytest.mark.parametrize(
    "name, arrays",
    [
        # no num_experts: a warning ("assuming N") came before the error line
        ("t.npz", {"topk_ids": np.array([[[0, 1], [1, 1]]])}),
        ("u.npz", {"topk_ids": np.array([[[0, 1]]]), "step": np.array([0.5])}),
    ],
)
def test_trace_stats_prints_only_the_error(tmp_path, capsys, name, arrays):
    p = _npz(tmp_path / name, **arrays)
    assert main(["trace", "stats", str(p)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {name}: "), err


def test_sglang_warning_comes_only_for_a_file_that_loads(tmp_path, capsys):
    p = _write(tmp_path / "load.json", json.dumps({"logical_count": [[1, 2], [3]], "x\ny": 1}))
    assert main(["trace", "stats", str(p)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: load.json: logical_count must be"), err


@pytest.mark.parametrize(
    "argv_for",
    [
        lambda p: ["plan", "--dry-run", "--model", str(p)],
        lambda p: ["plan", "--dry-run", "--hardware", str(p)],
        lambda p: ["export", "--plan", str(p), "--to", "eplb", "--out", str(p.parent / "o.npz")],
        lambda p: ["check", "--plan", str(p)],
    ],
    ids=["model", "hardware", "export", "check"],
)
def test_cli_on_deep_json_exits_2_with_one_line(tmp_path, capsys, argv_for):
    p = _write(tmp_path / "in.json", "[" * 100_000 + "]" * 100_000)
    assert main(argv_for(p)) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: in.json: nested too deeply to read (more than 64 levels)"]


def test_shipped_files_still_load():
    for p in MODEL_SPECS:
        load_model(str(p))
    for p in HF_CONFIGS:
        load_model(str(p))
    for p in HW_PROFILES:
        load_hardware(str(p))


# ---- writing: --out that cannot be written ----------------------------------------------------


@pytest.mark.parametrize(
    "argv_for",
    [
        lambda d: ["plan", "--model", "mixtral-8x7b", "--baseline", "eplb", "--out", str(d / "file" / "sub")],
        lambda d: ["trace", "synth", "--model", "mixtral-8x7b", "--tokens", "64", "--out", str(d / "file" / "t.npz")],
        lambda d: ["trace", "synth", "--model", "mixtral-8x7b", "--tokens", "64", "--out", str(d / ("a" * 300 + ".npz"))],
    ],
    ids=["plan-under-a-file", "trace-under-a-file", "name-too-long"],
)
def test_unwritable_out_was_a_traceback(tmp_path, capsys, argv_for):
    """--out under a regular file (or a name too long) raised FileExistsError / OSError."""
    (tmp_path / "file").write_text("x")
    assert main(argv_for(tmp_path)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "cannot write (" in err, err


def test_failing_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import planner.io as pio

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pio.os, "fsync", full)
    with pytest.raises(InputError, match=r"plan.json: cannot write \(No space left on device\)$"):
        pio.atomic_write_text(tmp_path / "plan.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_yaml_key_beyond_64_bits_was_a_value_error_in_the_message(tmp_path):
    """A 20,000-bit integer key reached the unknown-field message, whose str() raised ValueError."""
    p = _write(tmp_path / "spec.yaml", QWEN_SPEC.read_text() + "? 0x" + "f" * 5000 + "\n: 1\n")
    assert "spec.yaml: the top level: key an integer of 20000 bits is outside" in _error(load_model, str(p))


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_interrupted_plan_write_leaves_no_partial_file(tmp_path, capsys, monkeypatch, existing):
    import planner.io as pio

    argv = ["plan", "--model", "mixtral-8x7b", "--baseline", "eplb", "--out", str(tmp_path)]
    old = None
    if existing:
        assert main(argv) == 0
        old = (tmp_path / "plan.json").read_bytes()

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(pio.os, "fsync", interrupt)
    assert main([*argv, "--seed", "5", "--force"]) == 1  # click turns the interrupt into Abort
    assert capsys.readouterr().err.splitlines()[-1] == "aborted"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["plan.json"] if existing else [])
    if existing:
        assert (tmp_path / "plan.json").read_bytes() == old


def test_non_utf8_names_the_byte(tmp_path):
    p = _write(tmp_path / "spec.yaml", b"name\xff: x\n")
    assert _error(load_model, str(p)) == "spec.yaml: cannot read as UTF-8 text (byte 0xff at offset 4)"
    q = _write(tmp_path / "load.json", b'{"logical_count": [[1]]}\xfe')
    assert _error(load_trace, q) == "load.json: cannot read as UTF-8 text (byte 0xfe at offset 24)"
