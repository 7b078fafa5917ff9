"""``moe-planner profile`` on CPU: the file it writes is a HardwareProfile the cost model uses;
the profile assembly, shape listing and copy fixed cost on hand-worked inputs."""

import io
import json

import pytest

torch = pytest.importorskip("torch")

from planner.cli import main  # noqa: E402
from planner.specs.hardware import load_hardware  # noqa: E402
from tests.conftest import kernel_module, make_model  # noqa: E402


@pytest.fixture(scope="module")
def prof():
    return kernel_module("profiler")


@pytest.fixture(scope="module")
def common():
    return kernel_module("measure_common")


def test_cpu_profile_round_trip_and_predict(tmp_path, capsys):
    spec = tmp_path / "tiny.json"
    spec.write_text(make_model(num_shared_experts=1).model_dump_json())
    out = tmp_path / "hw" / "cpu-test.json"
    args = ["profile", "--device", "cpu", "--base", "h100", "--model", str(spec), "--tokens", "1,4,16",
            "--runs", "1", "--reps", "2", "--warmup", "0", "--out", str(out), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    hw = load_hardware(out)
    assert hw.name == "cpu-test" and hw.measured.device.startswith("cpu")
    assert "CPU profile" in hw.description and hw.measured.status == "mixed"
    # tiny-moe: routed and shared experts are both (64, 32) -> one shape; 3 token counts
    t = hw.table_for(64, 32, "bf16")
    assert t is not None and t.tokens == [1, 4, 16]
    fp8_ok = json.loads(next((tmp_path / "hw" / "measurements").glob("*.json")).read_text())["expert_ffn"]["fp8_note"] is None
    assert {x.dtype for x in hw.expert_ffn_tables} == ({"bf16", "fp8"} if fp8_ok else {"bf16"})
    assert all(v > 0 for v in t.ffn_ms) and t.w13_ms is not None and t.w2_ms is not None
    # datasheet fields from the base, measured ones from this machine
    base = load_hardware("h100")
    assert hw.nvlink == base.nvlink and hw.nic == base.nic
    assert hw.peak_tflops["bf16"] == pytest.approx(summary["gemm_tflops_measured"], rel=1e-3)
    assert [p.bytes for p in hw.pcie.h2d_pinned] == [4 << 10, 64 << 10, 1 << 20]
    raw = json.loads((tmp_path / "hw" / "measurements" / f"cpu-test-profile-{hw.measured.date}.json").read_text())
    assert raw["mode"] == "cpu" and raw["copies"]["roundtrip_data_ok"] and raw["ceilings"]["copy_data_ok"]
    assert all(c["rel_err_vs_float64"] < 2e-2 for c in raw["checks"])  # bf16 rounding
    assert {r["E"] for r in raw["grouped"]["rows"]} == {2, 4}
    assert raw["layer_ops"]["rows"][0]["E"] == 8 and raw["layer_ops"]["rows"][0]["K"] == 2
    assert "torchrun" in raw["collectives"]["note"]
    assert raw["provenance"]["command_line"].startswith("moe-planner profile")
    # the cost model reads it: predict takes the measured table at 4 tokens (its monotone envelope:
    # a CPU hiccup at 1 token would lift the 4-token figure to it)
    assert main(["predict", "--model", str(spec), "--hardware", str(out), "--tokens-per-expert", "4", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["source"] == "measured table" and pred["expert_ffn_ms"] == pytest.approx(max(t.ffn_ms[:2]))
    # refuses to overwrite
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_options(tmp_path, capsys):
    out = str(tmp_path / "x.json")
    assert main(["profile", "--device", "cpu", "--out", out, "--tokens", "0,4"]) == 2
    assert "--tokens" in capsys.readouterr().err
    assert main(["profile", "--device", "cpu", "--out", out, "--runs", "0"]) == 2
    assert main(["profile", "--device", "cpu", "--out", out, "--name", "Bad Name"]) == 2
    assert not (tmp_path / "x.json").exists()


def _raw(cuda=False, coll=None):
    # copies on a line t = 2 µs + bytes / (1 GB/s): 4 KB -> 6.096 µs, 1 MB -> 1050.576 µs
    rows = []
    for kind in ("h2d_pinned", "h2d_pageable", "d2h_pinned"):
        for b in (4096, 65536, 1 << 20):
            us = 2.0 + b / 1e3
            rows.append({"kind": kind, "bytes": b, "ms": us / 1e3, "GBps": b / (us * 1e-6) / 1e9})
    return {
        "provenance": {"device_kind": "cuda" if cuda else "cpu", "device": "NVIDIA H100 80GB HBM3" if cuda else "cpu (x)",
                       "date_utc": "2026-11-23T07:00:00Z", "mem_gib": 79.1 if cuda else 15.5, "sms": 132 if cuda else 2,
                       "l2_mb": 50.0 if cuda else None, "torch": "2.11", "cuda": "13.0" if cuda else None,
                       "driver_version": "580" if cuda else None, "command_line": "moe-planner profile"},
        "ceilings": {"copy_GBps_rw": 2900.0 if cuda else 10.0, "copy_bytes": 1 << 30, "gemm_TFLOPs": 700.0 if cuda else 0.5,
                     "gemm_n": 8192, "gemm_dtype": "bfloat16"},
        "copies": {"rows": rows, "fixed_cost": None},
        "expert_ffn": {"rows": [
            {"d": 64, "f": 32, "M": m, "dtype": "bf16", "ffn_ms": 0.01 * m, "w13_ms": 0.006 * m, "w2_ms": 0.004 * m,
             "models": ["tiny:routed"]} for m in (4, 1, 16)]},
        "tokens": [1, 4, 16], "method": "test", "notes": [], "collectives": coll or {"note": "one process"},
    }


def test_build_profile_by_hand(prof, common):
    from planner.specs.base import parse
    from planner.specs.hardware import HardwareProfile

    raw = _raw()
    raw["copies"]["fixed_cost"] = common.fixed_costs(raw["copies"]["rows"])
    assert raw["copies"]["fixed_cost"]["h2d_pinned"]["fixed_us_fit_4KB_1MB"] == pytest.approx(2.0)
    base = load_hardware("h100")
    data = kernel_module("profile_build").build_profile(raw, name="t", base=base, raw_name="m.json")
    hw = parse(HardwareProfile, {k: v for k, v in data.items() if v is not None}, "t")
    assert hw.pcie.copy_latency_us == pytest.approx(2.0)
    assert hw.pcie.h2d_pinned[0].gbps == pytest.approx(4096 / 6.096e-6 / 1e9, rel=1e-4)
    assert hw.hbm_bandwidth_gbps == 10.0 and hw.hbm_gib == 16.0  # CPU: memory rounded up, not the H100's 80
    assert hw.peak_tflops == {"bf16": 0.5} and hw.nvlink == base.nvlink
    t = hw.expert_ffn_tables[0]
    assert t.tokens == [1, 4, 16] and t.ffn_ms == [0.01, 0.04, 0.16]  # sorted by token count

    # a GPU of one node with NCCL collectives: nvlink from the all-to-all, peaks from the datasheet
    coll = {"world_size": 8, "one_node": True, "backend": "nccl", "rows": [
        {"bytes": 1024, "all_to_all_ms": 0.02, "all_to_all_busbw_GBps": 0.05},
        {"bytes": 1 << 28, "all_to_all_ms": 0.8, "all_to_all_busbw_GBps": 293.6}]}
    raw = _raw(cuda=True, coll=coll)
    raw["copies"]["fixed_cost"] = common.fixed_costs(raw["copies"]["rows"])
    data = kernel_module("profile_build").build_profile(raw, name="g", base=base, raw_name="m.json")
    hw = parse(HardwareProfile, {k: v for k, v in data.items() if v is not None}, "g")
    assert hw.nvlink.bandwidth_gbps == 293.6 and hw.nvlink.latency_us == 20.0
    assert hw.nvlink.gpus_per_domain == 8 and hw.nic == base.nic
    assert hw.peak_tflops == base.peak_tflops and hw.hbm_gib == 80.0 and hw.hbm_usable_gib == 79.1
    assert hw.num_sms == 132 and hw.l2_mb == 50.0 and hw.hbm_datasheet_gbps == 3350.0
    assert "nvlink.bandwidth_gbps" in hw.measured.notes and "m.json" in hw.measured.source


def test_distinct_shapes_of_deepseek_v3(common):
    spec = {"name": "deepseek-v3", "hidden_size": 7168, "num_experts": 256, "top_k": 8, "expert_intermediate_size": 2048,
            "num_shared_experts": 1, "first_k_dense": 3, "dense_intermediate_size": 18432}
    shapes = common.distinct_shapes([spec])
    assert [(s["d"], s["f"]) for s in shapes] == [(7168, 2048), (7168, 18432)]
    assert shapes[0]["uses"] == ["deepseek-v3:routed", "deepseek-v3:shared"]
    assert shapes[0]["max_routed_experts"] == 256 and shapes[0]["top_k"] == 8
    assert shapes[1]["model"] == "deepseek-v3:dense" and shapes[1]["max_routed_experts"] == 0


def test_progress_bar_in_a_log_writes_sections_and_tenths(prof):
    buf = io.StringIO()
    p = prof.Progress(100, buf)
    p.step("copies a", 3)  # a new section: a line
    p.step("copies b", 2)  # same section, same tenth: none
    for i in range(95):  # one section: a line at each tenth (10, 20, ..., 100)
        p.step(f"ffn {i}")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 + 1 + 10  # copies; ffn starts (6%); tenths 10..100
    assert lines[0].split()[1] == "3/100" and lines[1].split()[1] == "6/100"
    assert lines[-1].startswith("[" + "#" * 30 + "] 100/100")


def test_a_budget_cuts_the_run_short(prof):
    opts = prof.ProfileOptions(device="cpu", budget_s=1e-9, models=(make_model().model_dump(),), tokens=(1, 2),
                               runs=3, reps=4, warmup=2, fp8=False)
    buf = io.StringIO()
    raw = prof.measure(opts, [], buf)
    assert raw["cut_by_budget"] and raw["grouped"]["rows"] == [] and raw["layer_ops"]["rows"] == []
    assert [r["M"] for r in raw["expert_ffn"]["rows"]] == [1, 2] and all(r["cut_by_budget"] for r in raw["expert_ffn"]["rows"])
    assert raw["expert_ffn"]["dtypes"] == ["bf16"] and "--no-fp8" in raw["expert_ffn"]["fp8_note"]
    assert any("skipped" in n for n in raw["notes"]) and any("budget" in n for n in raw["notes"])
    assert buf.getvalue().rstrip().splitlines()[-1].startswith("[" + "#" * 30 + "]")  # the bar reached the end


@pytest.mark.gpu
def test_cuda_quick_profile(tmp_path, capsys):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "gpu.json"
    assert main(["profile", "--device", "cuda", "--quick", "--model", "qwen3-30b-a3b", "--tokens", "1,64,1024",
                 "--out", str(out), "--json"]) == 0
    hw = load_hardware(out)
    assert hw.measured.device == torch.cuda.get_device_name() and hw.measured.status == "mixed"
    assert hw.table_for(2048, 768, "bf16").tokens == [1, 64, 1024]
    assert hw.hbm_bandwidth_gbps > 300 and hw.pcie.h2d_pinned[-1].gbps > 5
