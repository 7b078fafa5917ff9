"""A fused expert path for the MoE layer in Triton: gather + gate/up GEMM + SwiGLU, down GEMM + weight.

Why: the torch layer (``moe_layer``: ``index_select`` permute, ``torch._grouped_mm``,
elementwise SiLU·up, ``index_add_`` combine) moves every routed token row several times between
its kernels, and on an H100 reaches only 26-50% of the roofline for fine-grained experts
(docs/facts.md §2). This module fuses the permute into the first GEMM's loads and the SwiGLU and
routing weight into the GEMMs' epilogues, in the style of the fused-MoE kernels of public
inference engines (written here from their published description, not from their code).

Shape legend as in :mod:`.moe_layer` (T tokens, D hidden, E experts, F expert FFN width, K top-k,
N = T·K routed (token, choice) pairs), plus::

    BM  BLOCK_M, rows of one block      P   padded rows = Σ_e ceil(c_e / BM)·BM  (c_e: pairs of e)
    B   blocks = P / BM                 Pmax, Bmax  their upper bounds, known without a host sync

A pair is numbered ``n = t·K + k`` (token t, its k-th choice), the order of
``topk_ids_TK.reshape(-1)``.

The steps, each specified in the docstring of the function that does it: 1. align
(:func:`moe_align`), 2. gather + gate/up GEMM + SwiGLU (:func:`_gate_up_kernel`), 3. down GEMM
+ routing weight (:func:`_down_kernel`), 4. combine (:func:`fused_moe`, which also says the
precision). :func:`fused_moe` is steps 1-4 for a whole layer (what ``moe_forward(...,
backend="triton")`` calls); :func:`experts_ffn_sorted` runs steps 1-3 on rows already sorted by
expert with unit weights (what ``experts_ffn(..., backend="triton")`` and so one EP rank's share
call). Block sizes: :func:`default_config`.

Running on the CPU: Triton's interpreter runs these kernels on CPU tensors when the environment
variable ``TRITON_INTERPRET=1`` is set *before this module is imported* (``triton.jit`` reads it
when it decorates, and triton's own library when triton is imported), and it must stay set while
they run. :data:`INTERPRETED` records which mode this import got. The interpreter computes
``tl.dot`` with numpy and reads bf16 as raw integers, so when interpreted the kernels convert
bf16 tiles to float32 before each dot (constexpr ``UPCAST``, false on a GPU, where it compiles to
nothing): the products of bf16 values are exact in float32 either way, so the CPU result matches
what a bf16 MMA with fp32 accumulation computes up to summation order.

Importing this module imports triton (an ImportError without it); ``moe_layer`` imports it only
when the ``triton`` backend is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

#: True when this import decorated the kernels for Triton's CPU interpreter (TRITON_INTERPRET=1).
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

#: Input dtypes the kernels accept.
DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class TritonMoEConfig:
    """Tile sizes and launch parameters of the two kernels (powers of two >= 16 for the tiles)."""

    block_m: int = 64
    """BM, rows of a block: each expert's pairs are padded to a multiple of it."""
    gate_up_block_n: int = 64
    """Columns of F per kernel-1 program (it computes this many gate and as many up columns)."""
    gate_up_block_k: int = 64
    """Slice of D per kernel-1 loop step."""
    down_block_n: int = 128
    """Columns of D per kernel-2 program."""
    down_block_k: int = 64
    """Slice of F per kernel-2 loop step."""
    group_m: int = 8
    """Blocks visited side by side for one column tile (L2 reuse of the weight tile)."""
    num_warps: int = 4
    """Warps per program."""
    num_stages: int = 4
    """Software-pipelining depth of the K loops."""

    def __post_init__(self) -> None:
        for name in ("block_m", "gate_up_block_n", "gate_up_block_k", "down_block_n", "down_block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"TritonMoEConfig.{name} must be a power of two >= 16 (got {v})")
        for name in ("group_m", "num_warps", "num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"TritonMoEConfig.{name} must be >= 1 (got {getattr(self, name)})")


def default_config(num_pairs: int, num_experts: int) -> TritonMoEConfig:
    """Defaults for N pairs over E experts: BM 16 / 32 / 64 as the mean rows per expert N/E is
    <= 16 / <= 48 / more (decode batches waste less padding on small blocks). Unmeasured.
    Block sizes (:class:`TritonMoEConfig`) are arguments; :func:`default_config` picks BM from the
    mean rows per expert (smaller blocks waste less padding when experts get few rows). The
    defaults are starting points for an H100 chosen from the tile shapes fused-MoE kernels commonly
    use there; they have **not** been measured (no GPU was available when this was written).
    Compiled for sm_90 without a GPU (Triton 3.9, bf16, the defaults; tests/kernels checks it):
    both kernels lower to Hopper ``wgmma``, 96 KB of shared memory, 128 registers, no spills. When D
    (kernel 1) or F (kernel 2) is not a multiple of BLOCK_K the masked K loop was not pipelined by
    that compiler (24 KB shared); every docs/facts.md shape divides 64.
    """
    mean = num_pairs / max(num_experts, 1)
    block_m = 16 if mean <= 16 else 32 if mean <= 48 else 64
    return TritonMoEConfig(block_m=block_m)


# ---- 1. align --------------------------------------------------------------------------------


def padded_rows_bound(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Pmax: padded rows for any routing of N pairs over E experts (:func:`moe_align`)."""
    rows = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    return -(-rows // block_m) * block_m


def moe_align(
    expert_N: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort pairs by expert into blocks of ``block_m`` rows of one expert each.

    ``expert_N`` int [N]: the expert of each pair (``topk_ids_TK.reshape(-1)``). Returns
    ``(sorted_ids_P int32 [Pmax], block_expert_B int32 [Bmax], num_padded_1 int32 [1])`` (below).
    Runs on ``expert_N``'s device without a host synchronisation.

    **1. Align** (:func:`moe_align`, torch, no host synchronisation). The N pairs are sorted by expert
    (stable: tokens keep their order inside an expert) and each expert's run is padded to a multiple
    of BM, so that every block of BM rows belongs to one expert::

        c_e        = #{n : expert(n) = e}
        pad_e      = ceil(c_e / BM) · BM,   end_e = Σ_{e' <= e} pad_e',   start_e = end_e - pad_e
        sorted_ids_P[start_e + j] = the j-th pair of expert e (j < c_e),  N (a sentinel) otherwise
        block_expert_B[b]         = the e with start_e <= b·BM < end_e
        num_padded_1              = end_{E-1} = P

    P depends on the routing, so buffers are sized for ``Pmax = ceil((N + min(E, N)·(BM - 1)) / BM)·BM``
    (at most BM - 1 padding rows per expert that receives a pair, and at most min(E, N) experts do)
    and the kernels' grids cover ``Bmax = Pmax / BM`` blocks; a program whose block starts at or
    after P (read from ``num_padded_1`` on the device) returns at once. Experts with no pair get no
    block. Nothing here calls ``.item()`` or ``bincount`` (which syncs on CUDA to size its output).
    """
    dev = expert_N.device
    N = expert_N.numel()
    expert_N = expert_N.reshape(-1).to(torch.int64)
    p_max = padded_rows_bound(N, num_experts, block_m)
    counts_E = torch.zeros(num_experts, dtype=torch.int64, device=dev)
    counts_E.index_add_(0, expert_N, torch.ones_like(expert_N))
    pad_E = (counts_E + block_m - 1) // block_m * block_m
    end_E = torch.cumsum(pad_E, 0)
    start_E = end_E - pad_E
    first_E = torch.cumsum(counts_E, 0) - counts_E  # first sorted position of each expert
    order_N = torch.argsort(expert_N, stable=True)
    e_sorted_N = expert_N[order_N]
    dest_N = start_E[e_sorted_N] + torch.arange(N, device=dev) - first_E[e_sorted_N]
    sorted_ids_P = torch.full((p_max,), N, dtype=torch.int32, device=dev)
    sorted_ids_P[dest_N] = order_N.to(torch.int32)
    block_start_B = torch.arange(0, p_max, block_m, device=dev)
    block_expert_B = torch.searchsorted(end_E, block_start_B, right=True).clamp_(max=num_experts - 1)
    return sorted_ids_P, block_expert_B.to(torch.int32), end_E[-1:].to(torch.int32)


# ---- 2./3. kernels ---------------------------------------------------------------------------


@triton.jit
def _tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Program id -> (block, column tile), GROUP_M blocks per column tile side by side."""
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    return pid_m, pid_n


@triton.jit
def _block_rows(sorted_ids_ptr, block_expert_ptr, pid_m, N, BLOCK_M: tl.constexpr):
    """Rows of block ``pid_m``: padded row ids, their pair ids (N: padding), valid mask, expert."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + rows)
    e = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    return rows, pair, pair < N, e


@triton.jit
def _gate_up_kernel(
    x_ptr, w13_ptr, h_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
    N, F, D, TOP_K, num_blocks,
    stride_xt, stride_xd, stride_we, stride_wf, stride_wd, stride_hp, stride_hf,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """h[r, j] = SiLU(x[t_r] · w13[e, j]) · (x[t_r] · w13[e, F + j]) for one block and column tile.

    **2. Kernel 1** (:func:`_gate_up_kernel`), one program per (block b, column tile of F), tiles
    visited in GROUP_M-grouped order (GROUP_M blocks side by side share a weight column tile in L2)::

        rows r = b·BM + [0, BM),  n_r = sorted_ids[r],  valid_r = n_r < N,  t_r = n_r // K
        e = block_expert[b]
        gate_r,j = Σ_d x[t_r, d] · w13[e, j, d]          (fp32 accumulators, gathered rows of x:
        up_r,j   = Σ_d x[t_r, d] · w13[e, F + j, d]        the permute is fused into the loads)
        h[r, j]  = SiLU(gate) · up = gate · σ(gate) · up  (epilogue, fp32, stored in x's dtype)

    One program computes the gate and the up tile of the same columns j, so each gathered x tile is
    loaded once for both and the SwiGLU needs no second pass. ``h_PF`` [Pmax, F] is indexed by padded
    row; padding rows are never written.
    """
    pid_m, pid_n = _tile(tl.program_id(0), num_blocks, tl.cdiv(F, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    rows, pair, valid, e = _block_rows(sorted_ids_ptr, block_expert_ptr, pid_m, N, BLOCK_M)
    tok = (pair // TOP_K).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < F
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tok[:, None] * stride_xt + offs_k[None, :] * stride_xd
    g_ptrs = w13_ptr + e * stride_we + cols[None, :] * stride_wf + offs_k[:, None] * stride_wd  # [BK, BN]
    u_ptrs = g_ptrs + F * stride_wf
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(D, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
            wg = tl.load(g_ptrs, mask=col_ok[None, :], other=0.0)
            wu = tl.load(u_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = offs_k < D - k * BLOCK_K
            a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
            wg = tl.load(g_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            wu = tl.load(u_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:  # the CPU interpreter only: its dot reads bf16 as integers
            a = a.to(tl.float32)
            wg = wg.to(tl.float32)
            wu = wu.to(tl.float32)
        acc_g = tl.dot(a, wg, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, wu, acc_u, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_xd
        g_ptrs += BLOCK_K * stride_wd
        u_ptrs += BLOCK_K * stride_wd
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    h_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_hp + cols[None, :] * stride_hf
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(
    h_ptr, w2_ptr, out_ptr, weight_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
    N, D, F, num_blocks,
    stride_hp, stride_hf, stride_we, stride_wd, stride_wf, stride_on, stride_od,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, MUL_WEIGHT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """outk[n_r, i] = weight[n_r] · Σ_j h[r, j] · w2[e, i, j] for one block and column tile.

    **3. Kernel 2** (:func:`_down_kernel`), one program per (block b, column tile of D)::

        y[r, i]  = Σ_j h[r, j] · w2[e, i, j]                 (fp32)
        outk[n_r, i] = topk_weight[n_r] · y[r, i]  for valid rows, stored in x's dtype

    The padding rows of ``h`` are uninitialised; row r of a product depends on row r of ``h`` alone
    and padding rows are never stored, so they could be read as they are, but they are masked to
    zero on load (one predicate per row) so garbage NaNs never enter an MMA.
    """
    pid_m, pid_n = _tile(tl.program_id(0), num_blocks, tl.cdiv(D, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    rows, pair, valid, e = _block_rows(sorted_ids_ptr, block_expert_ptr, pid_m, N, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < D
    offs_k = tl.arange(0, BLOCK_K)
    # padding rows of h are uninitialised: masked to zero (their products are never stored, but
    # NaN garbage would still raise floating-point flags in the interpreter)
    a_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_hp + offs_k[None, :] * stride_hf
    b_ptrs = w2_ptr + e * stride_we + cols[None, :] * stride_wd + offs_k[:, None] * stride_wf  # [BK, BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(F, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = offs_k < F - k * BLOCK_K
            a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_hf
        b_ptrs += BLOCK_K * stride_wf
    if MUL_WEIGHT:
        acc = acc * tl.load(weight_ptr + pair, mask=valid, other=0.0)[:, None]
    o_ptrs = out_ptr + pair[:, None].to(tl.int64) * stride_on + cols[None, :] * stride_od
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


# ---- host side -------------------------------------------------------------------------------


def _check(x: torch.Tensor, w13_E2FD: torch.Tensor, w2_EDF: torch.Tensor) -> None:
    if x.dtype not in DTYPES:
        raise ValueError(f"the triton MoE kernels take float16, bfloat16 or float32 (got {x.dtype})")
    if w13_E2FD.dtype != x.dtype or w2_EDF.dtype != x.dtype:
        raise ValueError(f"weights must have x's dtype {x.dtype} (got {w13_E2FD.dtype}, {w2_EDF.dtype})")
    E, twoF, D = w13_E2FD.shape
    if twoF % 2 or w2_EDF.shape != (E, D, twoF // 2) or x.shape[-1] != D:
        raise ValueError(f"shapes do not match: x {tuple(x.shape)}, w13 {tuple(w13_E2FD.shape)}, w2 {tuple(w2_EDF.shape)}")


def _routed_rows(
    x_MD: torch.Tensor,
    expert_N: torch.Tensor,
    weight_N: torch.Tensor | None,
    top_k: int,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
    config: TritonMoEConfig | None,
) -> torch.Tensor:
    """Steps 1-3: ``outk_ND`` (x's dtype), row n = pair n's weighted expert output; pair n reads
    row n // top_k of ``x_MD``. ``weight_N`` None: unit weights (no multiply)."""
    E, twoF, D = w13_E2FD.shape
    F_ = twoF // 2
    N = expert_N.numel()
    outk_ND = x_MD.new_empty(N, D)
    if N == 0:
        return outk_ND
    cfg = config or default_config(N, E)
    sorted_ids_P, block_expert_B, num_padded_1 = moe_align(expert_N, E, cfg.block_m)
    P, B = sorted_ids_P.numel(), block_expert_B.numel()
    h_PF = x_MD.new_empty(P, F_)
    prec = "ieee" if x_MD.dtype == torch.float32 else "tf32"  # "tf32" is ignored for 16-bit inputs
    upcast = INTERPRETED and x_MD.dtype == torch.bfloat16
    launch = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    grid1 = (B * triton.cdiv(F_, cfg.gate_up_block_n),)
    _gate_up_kernel[grid1](
        x_MD, w13_E2FD, h_PF, sorted_ids_P, block_expert_B, num_padded_1,
        N, F_, D, top_k, B,
        x_MD.stride(0), x_MD.stride(1), w13_E2FD.stride(0), w13_E2FD.stride(1), w13_E2FD.stride(2),
        h_PF.stride(0), h_PF.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.gate_up_block_n, BLOCK_K=cfg.gate_up_block_k, GROUP_M=cfg.group_m,
        EVEN_K=D % cfg.gate_up_block_k == 0, PRECISION=prec, UPCAST=upcast, **launch,
    )
    w_N = outk_ND if weight_N is None else weight_N.reshape(-1).to(torch.float32).contiguous()
    grid2 = (B * triton.cdiv(D, cfg.down_block_n),)
    _down_kernel[grid2](
        h_PF, w2_EDF, outk_ND, w_N, sorted_ids_P, block_expert_B, num_padded_1,
        N, D, F_, B,
        h_PF.stride(0), h_PF.stride(1), w2_EDF.stride(0), w2_EDF.stride(1), w2_EDF.stride(2),
        outk_ND.stride(0), outk_ND.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.down_block_n, BLOCK_K=cfg.down_block_k, GROUP_M=cfg.group_m,
        EVEN_K=F_ % cfg.down_block_k == 0, MUL_WEIGHT=weight_N is not None, PRECISION=prec, UPCAST=upcast, **launch,
    )
    return outk_ND


def fused_moe(
    x_TD: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
    *,
    config: TritonMoEConfig | None = None,
) -> torch.Tensor:
    """The routed experts of a layer: ``out_TD[t] = Σ_k weight[t, k] · FFN_{ids[t, k]}(x[t])``.

    Steps 1-4 (module docstring). Returns float32 ``[T, D]`` (as ``moe_layer.combine``),
    deterministic for given inputs. ``config`` None: :func:`default_config`.

    **4. Combine**: ``out_TD = outk_NKD.view(T, K, D).sum(1)`` in float32 (torch). Each token's K
    rows are written by different programs (different experts), so summing them inside kernel 2
    would take atomic adds into a zeroed fp32 [T, D] buffer: the order of those additions depends on
    scheduling (a non-deterministic result), bf16 atomics are slow, and the buffer needs a memset.
    The torch sum is deterministic and costs one more write and read of N·D elements in x's dtype
    (2·2·T·K·D bytes in bf16, the same order as the ``h`` round trip 2·2·P·F); with K = 1 it is a
    reshape. If a GPU run shows this sum to matter, fuse it into a third small kernel over tokens.

    Precision: bf16 / fp16 inputs, fp32 accumulation and epilogues, ``h`` and ``outk`` rounded to
    x's dtype (as the torch ``grouped`` backend rounds its GEMM outputs); fp32 inputs use
    ``input_precision="ieee"`` (no TF32). Routing weights are applied in fp32.
    """
    _check(x_TD, w13_E2FD, w2_EDF)
    T, K = topk_ids_TK.shape
    outk_ND = _routed_rows(x_TD, topk_ids_TK.reshape(-1), topk_weights_TK, K, w13_E2FD, w2_EDF, config)
    return outk_ND.view(T, K, -1).sum(dim=1, dtype=torch.float32)


def experts_ffn_sorted(
    x_ND: torch.Tensor,
    counts_E: torch.Tensor,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
    *,
    config: TritonMoEConfig | None = None,
) -> torch.Tensor:
    """Each expert's FFN on its rows: ``x_ND`` sorted by expert, ``counts_E`` rows each (the
    contract of ``moe_layer.experts_ffn``). Steps 1-3 with unit weights; ``y_ND`` in x's dtype."""
    _check(x_ND, w13_E2FD, w2_EDF)
    E = w13_E2FD.shape[0]
    counts_E = counts_E.to(device=x_ND.device, dtype=torch.int64)
    if not counts_E.is_cuda:  # checking on a GPU would cost a host synchronisation
        assert counts_E.numel() == E and int(counts_E.sum()) == x_ND.shape[0], (counts_E.tolist(), E, x_ND.shape)
    expert_N = torch.repeat_interleave(torch.arange(E, device=x_ND.device), counts_E, output_size=x_ND.shape[0])
    return _routed_rows(x_ND, expert_N, None, 1, w13_E2FD, w2_EDF, config)
