"""kernels/triton_moe.py (the ``triton`` backend) against the naive float64 reference.

Skipped without triton (CI has none). On the CPU the kernels run in Triton's interpreter, which
needs ``TRITON_INTERPRET=1`` in the environment when triton is first imported (triton's own
library is decorated then) and while kernels run: this module sets it around its import and, by
an autouse fixture, around each test. If triton was already imported in this process without it,
the in-process tests skip and ``test_in_a_fresh_process`` runs this file in a new interpreter.
Two checks run in a subprocess without the interpreter: compiling both kernels for an H100
(sm_90, no GPU needed: triton ships ptxas) and, on a machine with CUDA, the compiled bf16 layer.
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (needed by the triton backend)", allow_module_level=True)

from tests.conftest import kernel_module, make_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_PREV = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    import triton  # noqa: E402
    from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

    _TRITON_INTERPRETED = isinstance(triton.language.standard.cdiv, InterpretedFunction)
    tm = kernel_module("triton_moe")
    if _TRITON_INTERPRETED and not tm.INTERPRETED:
        tm = importlib.reload(tm)
finally:
    if _PREV is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _PREV
IN_PROCESS = _TRITON_INTERPRETED and tm.INTERPRETED
interpreted = pytest.mark.skipif(
    not IN_PROCESS, reason="triton was imported in this process without TRITON_INTERPRET=1 (see test_in_a_fresh_process)"
)

SMALL = tm.TritonMoEConfig(block_m=16, gate_up_block_n=16, gate_up_block_k=16, down_block_n=16, down_block_k=16, group_m=3)


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def layer(ml, D, F, E, K, T, *, seed=0, dtype=torch.float32, **cfg_kw):
    cfg = ml.MoEConfig(hidden=D, ffn=F, num_experts=E, top_k=K, **cfg_kw)
    gen = torch.Generator().manual_seed(seed)
    w = ml.init_weights(cfg, dtype=dtype, generator=gen, with_bias=cfg.scoring == "sigmoid")
    x = torch.randn(T, D, generator=gen).to(dtype)
    return cfg, w, x


# (D, F, E, K, T, config): D and F not multiples of the tiles unless said
FUSED_CASES = {
    "odd-dims-small-tiles": (72, 40, 8, 3, 45, SMALL),  # several blocks, k steps and column tiles
    "default-config": (40, 24, 6, 2, 13, None),
    "experts-without-tokens": (32, 20, 16, 1, 5, SMALL),  # at least 11 of 16 experts get nothing
    "single-token": (48, 24, 8, 4, 1, SMALL),
    "k-equals-e": (24, 8, 4, 4, 7, SMALL),  # F = 8 < one tile
    "even-k": (64, 32, 6, 2, 30, tm.TritonMoEConfig(block_m=16, gate_up_block_k=32, down_block_k=32, group_m=2)),
}


@interpreted
@pytest.mark.parametrize("case", list(FUSED_CASES.values()), ids=list(FUSED_CASES))
def test_fused_experts_match_reference(ml, case):
    D, F, E, K, T, config = case
    cfg, w, x = layer(ml, D, F, E, K, T, seed=T)
    ids, wts = ml.route(x, w.router_ED, cfg)
    ref, _ = ml.reference_moe(x, w, cfg, topk_ids_TK=ids)
    out = tm.fused_moe(x, ids, wts, w.w13_E2FD, w.w2_EDF, config=config)
    assert out.dtype == torch.float32 and out.shape == (T, D)
    assert rel(out, ref) < 1e-5
    again = tm.fused_moe(x, ids, wts, w.w13_E2FD, w.w2_EDF, config=config)
    assert torch.equal(out, again)  # no atomics: bit-for-bit repeatable


@interpreted
def test_one_expert_spanning_many_blocks(ml):
    """Skewed routing: expert 0 gets every token (3 blocks of 16), experts 4-7 get none."""
    cfg, w, x = layer(ml, 40, 24, 8, 2, 40, seed=3)
    ids = torch.stack([torch.zeros(40, dtype=torch.long), 1 + torch.arange(40) % 3], dim=1)
    scores = (x @ w.router_ED.t()).softmax(-1).gather(1, ids)
    wts = scores / scores.sum(1, keepdim=True)
    ref, _ = ml.reference_moe(x, w, cfg, topk_ids_TK=ids)
    assert rel(tm.fused_moe(x, ids, wts, w.w13_E2FD, w.w2_EDF, config=SMALL), ref) < 1e-5
    assert rel(ml.moe_forward(x, w, cfg, backend="triton", topk=(ids, wts)), ref) < 1e-5


# moe_forward(backend="triton"): router and shared experts as the other backends
LAYER_CASES = {
    "mixtral-like": (dict(D=32, F=16, E=8, K=2, T=37), {}),
    "v3-like-groups-shared-bias": (
        dict(D=64, F=32, E=16, K=4, T=21),
        dict(scoring="sigmoid", n_group=4, topk_group=2, group_score="top2_sum", shared_ffn=24, routed_scaling=2.5),
    ),
    "top1-shared": (dict(D=16, F=8, E=12, K=1, T=9), dict(scoring="sigmoid", shared_ffn=8)),
}


@interpreted
@pytest.mark.parametrize("case", list(LAYER_CASES.values()), ids=list(LAYER_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_layer_backend_matches_reference(ml, case, dtype):
    shape, kw = case
    cfg, w, x = layer(ml, shape["D"], shape["F"], shape["E"], shape["K"], shape["T"], seed=5, dtype=dtype, **kw)
    ids, _ = ml.route(x, w.router_ED, cfg, w.bias_E)
    ref, _ = ml.reference_moe(x, w, cfg, topk_ids_TK=ids)
    out = ml.moe_forward(x, w, cfg, backend="triton")
    assert out.dtype == dtype and out.shape == x.shape
    # float32: summation order only; 16-bit: h and the weighted rows are rounded to x's dtype
    assert rel(out, ref) < {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]


@interpreted
def test_experts_ffn_backend_on_sorted_rows(ml):
    gen = torch.Generator().manual_seed(8)
    E, D, F = 6, 24, 20
    w13 = torch.randn(E, 2 * F, D, generator=gen) / D**0.5
    w2 = torch.randn(E, D, F, generator=gen) / F**0.5
    counts = [5, 0, 17, 1, 0, 9]
    x = torch.randn(sum(counts), D, generator=gen)
    want = ml.experts_ffn(x, counts, w13, w2, "loop")
    assert rel(ml.experts_ffn(x, counts, w13, w2, "triton"), want) < 1e-5
    assert rel(ml.run_local_experts(x, torch.tensor(counts), w13, w2, "triton"), want) < 1e-5
    assert rel(tm.experts_ffn_sorted(x, torch.tensor(counts), w13, w2, config=SMALL), want) < 1e-5
    assert ml.experts_ffn(x[:0], [0] * E, w13, w2, "triton").shape == (0, D)


@interpreted
def test_sharded_layer_with_the_triton_backend(ml):
    cfg, w, x = layer(ml, 32, 16, 8, 2, 30, seed=9)
    ids, wts = ml.route(x, w.router_ED, cfg)
    out, _ = ml.sharded_forward(x, w, cfg, list(range(8)), 4, ids, topk=(ids, wts), backend="triton")
    assert rel(out, ml.moe_forward(x, w, cfg, topk=(ids, wts), backend="loop")) < 1e-5


def test_align_puts_each_pair_once_in_blocks_of_one_expert():
    gen = torch.Generator().manual_seed(1)
    E, BM = 10, 16
    expert_N = torch.randint(0, 6, (70,), generator=gen)  # experts 6..9 get nothing
    expert_N[:40] = 2  # expert 2 spans three blocks
    N = expert_N.numel()
    ids_P, block_B, padded_1 = tm.moe_align(expert_N, E, BM)
    counts = torch.bincount(expert_N, minlength=E)
    assert int(padded_1) == int(((counts + BM - 1) // BM * BM).sum())
    assert ids_P.numel() == tm.padded_rows_bound(N, E, BM) >= int(padded_1)
    assert block_B.numel() * BM == ids_P.numel()
    real = ids_P[: int(padded_1)]
    valid = real[real < N]
    assert sorted(valid.tolist()) == list(range(N))  # each pair once
    assert (ids_P[int(padded_1):] == N).all()
    for b in range(int(padded_1) // BM):
        rows = real[b * BM : (b + 1) * BM]
        rows = rows[rows < N].long()
        assert len(rows) > 0 and (expert_N[rows] == block_B[b]).all()  # one expert, no empty block
        assert torch.equal(rows, rows.sort().values)  # stable: tokens keep their order
    assert set(block_B[: int(padded_1) // BM].tolist()) == set(expert_N.tolist())


def test_config_and_backend_resolution(ml, monkeypatch):
    with pytest.raises(ValueError, match="power of two"):
        tm.TritonMoEConfig(block_m=24)
    assert tm.default_config(64, 64).block_m == 16 and tm.default_config(32768, 256).block_m == 64
    assert "triton" in ml.BACKENDS
    assert ml.resolve_backend("auto", torch.zeros(1)) == "loop"  # auto never picks triton
    if IN_PROCESS:
        assert ml.resolve_backend("triton", torch.zeros(1)) == "triton"
    with pytest.raises(RuntimeError, match="float16, bfloat16 or float32"):
        ml.resolve_backend("triton", torch.zeros(1, dtype=torch.float64))
    monkeypatch.setattr(tm, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        ml.resolve_backend("triton", torch.zeros(1))


@interpreted
def test_benchmark_times_the_triton_backend(tmp_path, capsys):
    """benchmarks/kernels.py --cpu-smoke (bf16) with the triton column: the script's path only."""
    spec = importlib.util.spec_from_file_location("bench_kernels_triton", ROOT / "benchmarks" / "kernels.py")
    bk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bk)
    assert "triton" in bk.BACKENDS
    model = tmp_path / "tiny.json"
    model.write_text(make_model(num_shared_experts=1).model_dump_json())
    out = tmp_path / "k.json"
    assert bk.main(["--cpu-smoke", "--models", str(model), "--tokens", "32", "--backends", "triton,loop",
                    "--out", str(out)]) == 0
    assert "triton ms (% roofline)" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert row["triton_rel_err_vs_loop"] < 2e-2 and row["triton_ms"] > 0


def _run(script: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


COMPILE_SM90 = """
    import json, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from tests.conftest import kernel_module

    tm = kernel_module("triton_moe")
    c = tm.TritonMoEConfig()
    DT = {"x_ptr": "*bf16", "w13_ptr": "*bf16", "h_ptr": "*bf16", "w2_ptr": "*bf16", "out_ptr": "*bf16",
          "weight_ptr": "*fp32", "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", "num_padded_ptr": "*i32"}

    def build(kernel, consts, aligned):
        names = kernel.arg_names
        sig = {n: "constexpr" if n in consts else DT.get(n, "i32") for n in names}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
        k = triton.compile(ASTSource(kernel, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": c.num_warps, "num_stages": c.num_stages})
        return {"shared": k.metadata.shared, "wgmma": "wgmma" in k.asm["ptx"], "cubin": len(k.asm["cubin"])}

    res = {}
    for even in (True, False):
        res[f"gate_up even={even}"] = build(tm._gate_up_kernel, dict(
            BLOCK_M=c.block_m, BLOCK_N=c.gate_up_block_n, BLOCK_K=c.gate_up_block_k, GROUP_M=c.group_m,
            EVEN_K=even, PRECISION="tf32", UPCAST=False, stride_xd=1, stride_wd=1, stride_hf=1),
            ["x_ptr", "w13_ptr", "h_ptr", "stride_xt", "stride_we", "stride_wf", "stride_hp"])
        res[f"down even={even}"] = build(tm._down_kernel, dict(
            BLOCK_M=c.block_m, BLOCK_N=c.down_block_n, BLOCK_K=c.down_block_k, GROUP_M=c.group_m,
            EVEN_K=even, MUL_WEIGHT=True, PRECISION="tf32", UPCAST=False, stride_hf=1, stride_wf=1, stride_od=1),
            ["h_ptr", "w2_ptr", "out_ptr", "stride_hp", "stride_we", "stride_wd", "stride_on"])
    print(json.dumps(res))
"""


def test_kernels_compile_for_an_h100():
    """Both kernels, bf16, default tiles, compiled for sm_90 to a cubin (no GPU needed)."""
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton has no NVIDIA backend")
    r = _run(COMPILE_SM90)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(res) == 4
    for name, k in res.items():
        assert k["cubin"] > 0 and k["shared"] <= 227 * 1024, (name, k)
        assert k["wgmma"], f"{name}: no Hopper wgmma in the PTX"


@pytest.mark.gpu
def test_cuda_bf16_layer_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    r = _run("""
        from tests.conftest import cuda_layer_case, kernel_module
        ml = kernel_module("moe_layer")
        cfg, w, wc, x, ids, wts, ref = cuda_layer_case(ml, ffn=192)
        out = ml.moe_forward(x.cuda(), wc, cfg, backend="triton", topk=(ids.cuda(), wts.cuda())).cpu().double()
        print(float((out - ref).norm() / ref.norm()))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 2e-2


@pytest.mark.skipif(IN_PROCESS, reason="the interpreter tests ran in this process")
def test_in_a_fresh_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
