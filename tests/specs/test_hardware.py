"""HardwareProfile schema, the shipped profiles in hwprofiles/, and load_hardware's errors."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from planner.errors import InputError
from planner.specs import hardware as hwmod
from planner.specs.hardware import HARDWARE_NAMES, HardwareProfile, load_hardware

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
SHIPPED = ("a100-sxm-80gb", "b200", "h100-sxm", "h200-sxm")


def _h100_dict() -> dict:
    return json.loads((REPO / "hwprofiles" / "h100-sxm.json").read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: dict, name: str = "bad.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


def _load_error(tmp_path: Path, data: dict) -> str:
    with pytest.raises(InputError) as info:
        load_hardware(_write(tmp_path, data))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("bad.json: ")
    return msg


# ---- shipped profiles ------------------------------------------------------------------------


def test_shipped_names_listed():
    assert set(SHIPPED) <= set(HARDWARE_NAMES)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_with_provenance(name):
    hw = load_hardware(name)
    assert hw.name == name  # the file stem is the profile name
    prov = hw.measured
    assert prov.device and prov.date and prov.method and prov.source
    if prov.status == "datasheet":
        assert hw.expert_ffn_tables == []
        assert prov.torch is None and prov.cuda is None
    else:
        assert prov.torch and prov.cuda
        assert "Measured" in prov.notes and "Datasheet" in prov.notes
    assert hw.hbm_bandwidth_gbps <= (hw.hbm_datasheet_gbps or float("inf"))
    assert hw.hbm_bytes > 0


def test_h100_provenance_and_figures():
    hw = load_hardware("h100-sxm")
    assert hw.measured.status == "mixed"
    assert hw.measured.device == "NVIDIA H100 80GB HBM3"
    assert (hw.measured.torch, hw.measured.cuda, hw.measured.date) == ("2.11.0+cu130", "13.0", "2026-11-23")
    assert hw.measured.driver is None
    assert hw.hbm_bandwidth_gbps == pytest.approx(3004.4, abs=0.1)
    assert hw.peak_tflops["bf16"] == pytest.approx(989.4)
    assert hw.nvlink.bandwidth_gbps == 370 and hw.nic.bandwidth_gbps == 48
    assert hw.pcie.copy_latency_us == 7
    shapes = {(t.d, t.f) for t in hw.expert_ffn_tables}
    # 7 shapes from the shared file, 9 more and fp8 of all 16 from the project's own measurement
    assert len(shapes) == 16 and (2048, 1408) in shapes and (4096, 14336) in shapes and (7168, 18432) in shapes
    assert len(hw.expert_ffn_tables) == 32
    assert {t.dtype for t in hw.expert_ffn_tables} == {"bf16", "fp8"}
    assert all(len(t.tokens) == 15 and t.w13_ms and t.w2_ms for t in hw.expert_ffn_tables)


def test_aliases_and_case():
    assert load_hardware("H100").name == "h100-sxm"
    assert load_hardware("h200").name == "h200-sxm"


def _load_seed_script():
    spec = importlib.util.spec_from_file_location("seed_hwprofile", REPO / "tools" / "seed_hwprofile.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("gpu,name", [("h100", "h100-sxm"), ("h200", "h200-sxm")])
def test_seed_script_reproduces_shipped_profile(gpu, name):
    src = SHARED / gpu / "expert_ffn_bf16.json"
    if not src.is_file():
        pytest.skip(f"{src} not available")
    seed = _load_seed_script()
    extras = []
    if gpu == "h100":
        name_x = "hwprofiles/measurements/h100-sxm-2026-11-23.json"
        extras = [(json.loads((REPO / name_x).read_text(encoding="utf-8")), seed._extra_name(REPO / name_x))]
    built = seed.build_profile(json.loads(src.read_text(encoding="utf-8")), extras)
    shipped = json.loads((REPO / "hwprofiles" / f"{name}.json").read_text(encoding="utf-8"))
    assert built == shipped
    # sources describe the measurement (device, date, method), never a path outside the repository
    device = json.loads(src.read_text(encoding="utf-8"))["device"]["name"]
    assert shipped["measured"]["source"].startswith(
        f"bf16 expert-FFN timings on {device}, 2026-11-23 (the minimum of 4 runs of CUDA-event medians"
    )
    for t in shipped["expert_ffn_tables"]:
        assert t["source"].startswith((f"bf16 expert-FFN timings on {device}, 2026-11-23: rows of model",
                                       "hwprofiles/measurements/h100-sxm-2026-11-23.json: expert_ffn_"))
    assert "shared/data" not in json.dumps(shipped)
    # every measured row is in a table (duplicate shapes merged by the minimum)
    rows = json.loads(src.read_text(encoding="utf-8"))["rows"]
    hw = load_hardware(name)
    for r in rows:
        t = hw.table_for(r["d"], r["f"], "bf16")
        assert t is not None
        assert t.ffn_ms[t.tokens.index(r["M"])] <= round(r["ffn_ms"], 6)


def _all_specs(model: type[BaseModel], seen: set) -> None:
    if model in seen:
        return
    seen.add(model)
    for fname, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{fname} has no description"
        for sub in (HardwareProfile, hwmod.NvlinkSpec, hwmod.NicSpec, hwmod.PcieSpec,
                    hwmod.CurvePoint, hwmod.ExpertFfnTable, hwmod.Provenance):
            if sub.__name__ in str(field.annotation):
                _all_specs(sub, seen)


def test_every_field_has_a_description():
    seen: set = set()
    _all_specs(HardwareProfile, seen)
    assert len(seen) == 7


# ---- bad input -------------------------------------------------------------------------------


def test_negative_bandwidth(tmp_path):
    data = _h100_dict()
    data["nvlink"]["bandwidth_gbps"] = -5
    msg = _load_error(tmp_path, data)
    assert "nvlink.bandwidth_gbps" in msg and "greater than 0" in msg and "-5" in msg


def test_non_increasing_tokens(tmp_path):
    data = _h100_dict()
    data["expert_ffn_tables"][0]["tokens"][3] = 2
    msg = _load_error(tmp_path, data)
    assert "expert_ffn_tables[0].tokens" in msg
    assert "strictly increasing" in msg and "tokens[3]=2 follows tokens[2]=4" in msg


def test_unknown_field(tmp_path):
    data = _h100_dict()
    data["nvlink"]["bandwith_gbps"] = 1.0
    msg = _load_error(tmp_path, data)
    assert "unknown field 'nvlink.bandwith_gbps'" in msg


def test_unknown_profile_name_lists_known():
    with pytest.raises(InputError) as info:
        load_hardware("h900")
    msg = str(info.value)
    assert "'h900'" in msg and "\n" not in msg
    for name in SHIPPED:
        assert name in msg


def test_missing_file():
    with pytest.raises(InputError, match="no such file"):
        load_hardware("does/not/exist.json")


def test_length_mismatch(tmp_path):
    data = _h100_dict()
    data["expert_ffn_tables"][1]["ffn_ms"].pop()
    msg = _load_error(tmp_path, data)
    assert "expert_ffn_tables[1]" in msg and "ffn_ms has 14 values but tokens has 15" in msg


def test_zero_tokens_rejected(tmp_path):
    data = _h100_dict()
    data["expert_ffn_tables"][0]["tokens"][0] = 0
    msg = _load_error(tmp_path, data)
    assert "must be >= 1" in msg


def test_curve_sizes_must_increase(tmp_path):
    data = _h100_dict()
    data["pcie"]["d2h_pinned"][2]["bytes"] = 1024
    msg = _load_error(tmp_path, data)
    assert "pcie" in msg and "d2h_pinned[2].bytes=1024" in msg


def test_curve_must_be_positive(tmp_path):
    data = _h100_dict()
    data["pcie"]["h2d_pinned"][0]["gbps"] = 0
    msg = _load_error(tmp_path, data)
    assert "pcie.h2d_pinned[0].gbps" in msg and "greater than 0" in msg


def test_copy_latency_longer_than_measured_copy(tmp_path):
    data = _h100_dict()
    data["pcie"]["copy_latency_us"] = 40.0
    msg = _load_error(tmp_path, data)
    assert "h2d_pinned[0]" in msg and "copy_latency_us (40 µs)" in msg


def test_duplicate_table_shape(tmp_path):
    data = _h100_dict()
    data["expert_ffn_tables"].append(copy.deepcopy(data["expert_ffn_tables"][0]))
    msg = _load_error(tmp_path, data)
    assert "expert_ffn_tables[32] repeats the shape d=4096, f=14336" in msg


def test_datasheet_status_with_tables(tmp_path):
    data = _h100_dict()
    data["measured"]["status"] = "datasheet"
    msg = _load_error(tmp_path, data)
    assert "'datasheet'" in msg and "32 measured" in msg


def test_usable_memory_above_datasheet(tmp_path):
    data = _h100_dict()
    data["hbm_usable_gib"] = 81.0
    msg = _load_error(tmp_path, data)
    assert "hbm_usable_gib (81) must be <= hbm_gib (80)" in msg


def test_missing_bf16_peak(tmp_path):
    data = _h100_dict()
    del data["peak_tflops"]["bf16"]
    msg = _load_error(tmp_path, data)
    assert "peak_tflops must give bf16" in msg


def test_bad_date(tmp_path):
    data = _h100_dict()
    data["measured"]["date"] = "23/11/2026"
    msg = _load_error(tmp_path, data)
    assert "measured.date" in msg and "YYYY-MM-DD" in msg


def test_yaml_profile(tmp_path):
    p = tmp_path / "mine.yaml"
    data = _h100_dict()
    data["name"] = "my-h100"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    hw = load_hardware(str(p))
    assert hw.name == "my-h100" and len(hw.expert_ffn_tables) == 32


def test_profile_is_frozen():
    hw = load_hardware("h100-sxm")
    with pytest.raises(ValidationError):
        hw.num_sms = 1  # type: ignore[misc]
