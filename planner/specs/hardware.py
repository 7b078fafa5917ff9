"""HardwareProfile: one GPU kind as data — memory, compute peaks, links, measured kernel tables.

Hardware is data: every device figure lives in a profile file under the
top-level ``hwprofiles/`` folder (installed as the package ``planner.hwprofiles``), each with its
provenance (``measured``: which figures were measured, on what, when and how; which come from a
datasheet). Nothing here hard-codes a device.

Units: GiB for memory sizes (2**30 bytes), GB/s for bandwidths (10**9 bytes/s), TFLOP/s for
compute (dense, no 2:4 sparsity), µs for latencies, ms for kernel times, bytes for copy sizes.

Bandwidth conventions, so that the cost model reads every profile the same way:

- ``hbm_bandwidth_gbps`` is what a device-to-device copy achieves, counting bytes read plus
  bytes written (docs/facts.md §2: 3.00 TB/s on H100 against 3.35 TB/s on the datasheet).
- ``nvlink.bandwidth_gbps`` / ``nic.bandwidth_gbps`` are nccl-tests *bus* bandwidths per GPU and
  per direction for all-to-all (docs/facts.md §3), i.e. what an alpha-beta model divides
  ``bytes · (n−1)/n`` by.
- ``pcie`` curves hold, per copy size, the bandwidth one copy of that size achieved as measured
  (bytes / time of the whole copy, its fixed cost included); ``copy_latency_us`` is that fixed
  cost. :mod:`planner.cost.transfer` splits the two so that time = latency + bytes / bandwidth
  reproduces the measured points.

Loading: :func:`load_hardware` takes a shipped profile name (see :data:`HARDWARE_NAMES`) or a path
to a ``.json`` / ``.yaml`` file; bad files raise :class:`~planner.errors.InputError` with one line
naming the file, the field and the rule.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from planner.errors import InputError
from planner.specs.base import Spec, parse, read_mapping, show
from planner.specs.model import Dtype

#: Keys allowed in ``peak_tflops`` (tensor-core math formats; dense figures).
PeakDtype = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "fp6", "fp4", "int8"]

_Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


# ---- sub-models ------------------------------------------------------------------------------


class NvlinkSpec(Spec):
    """The scale-up fabric inside one NVLink domain (an 8-GPU HGX node, or an NVL72 rack)."""

    bandwidth_gbps: float = Field(
        gt=0, allow_inf_nan=False,
        description="Achievable all-to-all bus bandwidth per GPU per direction, GB/s (nccl-tests busbw), not the line rate",
    )
    latency_us: float = Field(ge=0, allow_inf_nan=False, description="Fixed cost (alpha) of one collective inside the domain, µs")
    gpus_per_domain: int = Field(ge=1, description="GPUs that share one NVLink domain (8 for HGX boards)")


class NicSpec(Spec):
    """The scale-out network between NVLink domains."""

    bandwidth_gbps: float = Field(
        gt=0, allow_inf_nan=False,
        description="Achievable bandwidth per GPU per direction between nodes, GB/s (one NIC's worth for all-to-all)",
    )
    latency_us: float = Field(ge=0, allow_inf_nan=False, description="Fixed cost (alpha) of one collective across nodes, µs")


class CurvePoint(Spec):
    """One measured host↔device copy: its size and the bandwidth that copy achieved."""

    bytes: int = Field(gt=0, description="Size of one copy, bytes")
    gbps: float = Field(
        gt=0, allow_inf_nan=False,
        description="Bandwidth of one copy of this size as measured: bytes / time of the whole copy (fixed cost included), GB/s",
    )


def _check_curve(points: list[CurvePoint], field: str) -> None:
    for i in range(1, len(points)):
        if points[i].bytes <= points[i - 1].bytes:
            raise ValueError(
                f"{field} sizes must be strictly increasing "
                f"({field}[{i}].bytes={points[i].bytes} follows {field}[{i - 1}].bytes={points[i - 1].bytes})"
            )


class PcieSpec(Spec):
    """The host↔device link: bandwidth curves per copy size and the fixed cost of one copy."""

    h2d_pinned: list[CurvePoint] = Field(min_length=1, description="Host-to-device copies from pinned host memory, by increasing size")
    d2h_pinned: list[CurvePoint] = Field(min_length=1, description="Device-to-host copies into pinned host memory, by increasing size")
    h2d_pageable: list[CurvePoint] | None = Field(
        default=None, description="Host-to-device copies from pageable host memory, by increasing size (None: not measured)"
    )
    copy_latency_us: float = Field(ge=0, allow_inf_nan=False, description="Fixed cost of one copy (launch and setup), µs")
    copy_compute_overlap: float = Field(
        default=0.0, ge=0, le=1, allow_inf_nan=False,
        description=(
            "Fraction of the shorter of a side-stream copy and concurrent compute that is hidden: "
            "t = max(copy, compute) + (1 − overlap) · min(copy, compute); 0: serial (unknown), 1: perfect"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> PcieSpec:
        for field in ("h2d_pinned", "d2h_pinned", "h2d_pageable"):
            points = getattr(self, field)
            if points is None:
                continue
            _check_curve(points, field)
            for i, p in enumerate(points):
                copy_us = p.bytes / (p.gbps * 1e3)
                if copy_us <= self.copy_latency_us:
                    raise ValueError(
                        f"{field}[{i}]: a copy of {p.bytes} bytes at {p.gbps:g} GB/s takes {copy_us:.3g} µs, "
                        f"which must exceed copy_latency_us ({self.copy_latency_us:g} µs)"
                    )
        return self


class ExpertFfnTable(Spec):
    """Measured time of ONE expert's FFN (gate+up GEMM, SiLU·mul, down GEMM) against its token count."""

    d: int = Field(gt=0, description="Hidden size h of the model (GEMM K of gate/up, N of down)")
    f: int = Field(gt=0, description="Expert FFN width (moe_intermediate_size)")
    dtype: Dtype = Field(description="Dtype of weights and activations in the measurement")
    tokens: list[int] = Field(min_length=1, description="Token counts M measured, strictly increasing, each >= 1")
    ffn_ms: list[_Pos] = Field(min_length=1, description="Time of the whole expert FFN at each token count, ms")
    w13_ms: list[_Pos] | None = Field(default=None, description="Time of the fused gate+up GEMM x[M,d] @ W13[d,2f] alone, ms (None: not measured)")
    w2_ms: list[_Pos] | None = Field(default=None, description="Time of the down GEMM h[M,f] @ W2[f,d] alone, ms (None: not measured)")
    source: str = Field(min_length=1, description="Where the figures come from (file and rows, or the profiling command)")

    @field_validator("tokens")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if v[0] < 1:
            raise ValueError(f"token counts must be >= 1 (tokens[0]={v[0]})")
        for i in range(1, len(v)):
            if v[i] <= v[i - 1]:
                raise ValueError(
                    f"token counts must be strictly increasing (tokens[{i}]={v[i]} follows tokens[{i - 1}]={v[i - 1]})"
                )
        return v

    @model_validator(mode="after")
    def _lengths(self) -> ExpertFfnTable:
        n = len(self.tokens)
        for field in ("ffn_ms", "w13_ms", "w2_ms"):
            values = getattr(self, field)
            if values is not None and len(values) != n:
                raise ValueError(
                    f"{field} has {len(values)} values but tokens has {n}: one time per token count "
                    f"(table d={self.d}, f={self.f}, {self.dtype})"
                )
        return self


class Provenance(Spec):
    """Where a profile's figures come from."""

    status: Literal["measured", "datasheet", "mixed"] = Field(
        description="measured: every figure measured; datasheet: every figure from vendor documents; mixed: some of each (notes say which)"
    )
    device: str = Field(min_length=1, description="Device name as the driver reports it (torch.cuda.get_device_name), or the product name")
    driver: str | None = Field(default=None, description="NVIDIA driver version of the measurement (None: unknown or not measured)")
    torch: str | None = Field(default=None, description="torch version of the measurement (None: not measured with torch)")
    cuda: str | None = Field(default=None, description="CUDA version of the measurement (None: not measured)")
    date: str = Field(description="Date of the measurement, or of compiling the datasheet figures (YYYY-MM-DD)")
    method: str = Field(min_length=1, description="How the figures were obtained (timing method, repeats, statistic kept)")
    source: str = Field(min_length=1, description="File(s) or URL(s) the figures come from")
    notes: str = Field(default="", description="Which figure is measured and which is from a datasheet or an estimate, and anything odd")

    @field_validator("date")
    @classmethod
    def _date(cls, v: str) -> str:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise ValueError(f"date must be YYYY-MM-DD (got {show(v)})")
        return v


# ---- the profile -----------------------------------------------------------------------------


class HardwareProfile(Spec):
    """One GPU kind: memory, compute peaks, interconnect, host link and measured expert-FFN tables."""

    name: str = Field(description="Profile name, lower case (the file stem of a shipped profile, e.g. h100-sxm)")
    description: str = Field(min_length=1, description="One line saying which product and configuration this is")
    hbm_gib: float = Field(gt=0, allow_inf_nan=False, description="Device memory on the datasheet, GiB")
    hbm_usable_gib: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="Device memory the runtime reports (torch total_memory), GiB; None: unknown, use hbm_gib",
    )
    hbm_bandwidth_gbps: float = Field(
        gt=0, allow_inf_nan=False,
        description="Achievable HBM bandwidth of a device-to-device copy, counting bytes read plus written, GB/s",
    )
    hbm_datasheet_gbps: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="HBM bandwidth on the datasheet, GB/s (None: not given)"
    )
    num_sms: int = Field(gt=0, description="Streaming multiprocessors (for wave quantization of GEMM tiles)")
    l2_mb: float = Field(gt=0, allow_inf_nan=False, description="L2 cache, MB")
    peak_tflops: dict[PeakDtype, _Pos] = Field(
        description="Dense tensor-core peak per math format, TFLOP/s (datasheet, without 2:4 sparsity); bf16 is required"
    )
    nvlink: NvlinkSpec = Field(description="Scale-up fabric (NVLink / NVSwitch) inside one domain")
    nic: NicSpec = Field(description="Scale-out network between domains")
    pcie: PcieSpec = Field(description="Host↔device link")
    comm_overlap: float = Field(
        default=0.0, ge=0, le=1, allow_inf_nan=False,
        description="Fraction of communication time hidden behind compute (0: none, 1: all)",
    )
    expert_ffn_tables: list[ExpertFfnTable] = Field(
        default_factory=list, description="Measured expert-FFN times, one table per (d, f, dtype) shape"
    )
    measured: Provenance = Field(description="Provenance of the figures in this profile")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"name must be lower case letters, digits, '.', '_' or '-' (got {show(v)})")
        return v

    @model_validator(mode="after")
    def _check(self) -> HardwareProfile:
        if "bf16" not in self.peak_tflops:
            raise ValueError(f"peak_tflops must give bf16 (got keys {sorted(self.peak_tflops)})")
        if self.hbm_usable_gib is not None and self.hbm_usable_gib > self.hbm_gib:
            raise ValueError(
                f"hbm_usable_gib ({self.hbm_usable_gib:g}) must be <= hbm_gib ({self.hbm_gib:g})"
            )
        if self.hbm_datasheet_gbps is not None and self.hbm_bandwidth_gbps > self.hbm_datasheet_gbps:
            raise ValueError(
                f"hbm_bandwidth_gbps ({self.hbm_bandwidth_gbps:g}, achievable) must be <= "
                f"hbm_datasheet_gbps ({self.hbm_datasheet_gbps:g})"
            )
        seen: dict[tuple[int, int, str], int] = {}
        for i, t in enumerate(self.expert_ffn_tables):
            key = (t.d, t.f, t.dtype)
            if key in seen:
                raise ValueError(
                    f"expert_ffn_tables[{i}] repeats the shape d={t.d}, f={t.f}, {t.dtype} "
                    f"of expert_ffn_tables[{seen[key]}]: one table per shape"
                )
            seen[key] = i
        if self.measured.status == "datasheet" and self.expert_ffn_tables:
            raise ValueError(
                f"measured.status is 'datasheet' but the profile has {len(self.expert_ffn_tables)} measured "
                "expert_ffn_tables: use 'mixed' or 'measured'"
            )
        return self

    # ---- derived ----------------------------------------------------------------------------

    @property
    def hbm_bytes(self) -> float:
        """Device memory in bytes: what the runtime reports when known, else the datasheet size."""
        gib = self.hbm_usable_gib if self.hbm_usable_gib is not None else self.hbm_gib
        return gib * 2**30

    def table_for(self, d: int, f: int, dtype: str) -> ExpertFfnTable | None:
        """The measured expert-FFN table of exactly this shape and dtype, or None."""
        for t in self.expert_ffn_tables:
            if t.d == d and t.f == f and t.dtype == dtype:
                return t
        return None


# ---- shipped profiles and loading ------------------------------------------------------------

#: Short names accepted by :func:`load_hardware` besides the file stems.
HARDWARE_ALIASES: dict[str, str] = {"h100": "h100-sxm", "h200": "h200-sxm", "a100": "a100-sxm-80gb"}


def profiles_dir() -> Path:
    """Folder of the shipped profiles: the installed ``planner.hwprofiles``, else ``hwprofiles/``."""
    try:
        res = importlib.resources.files("planner.hwprofiles")
        p = Path(str(res))
        if p.is_dir() and any(p.glob("*.json")):
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "hwprofiles"


def _shipped_names() -> tuple[str, ...]:
    d = profiles_dir()
    return tuple(sorted(p.stem for p in d.glob("*.json"))) if d.is_dir() else ()


#: Names of the profiles shipped in ``hwprofiles/`` (file stems).
HARDWARE_NAMES: tuple[str, ...] = _shipped_names()


def load_hardware(arg: str | Path) -> HardwareProfile:
    """A shipped profile by name (``h100-sxm``, or an alias such as ``h100``) or a .json/.yaml file."""
    text = str(arg)
    path = Path(text)
    is_path = path.suffix.lower() in (".json", ".yaml", ".yml") or "/" in text or "\\" in text
    if is_path:
        return parse(HardwareProfile, read_mapping(path), path.name)
    key = HARDWARE_ALIASES.get(text.lower(), text.lower())
    if key in HARDWARE_NAMES:
        shipped = profiles_dir() / f"{key}.json"
        return parse(HardwareProfile, read_mapping(shipped), shipped.name)
    known = ", ".join(HARDWARE_NAMES) or "(none found)"
    raise InputError(
        f"hardware: unknown profile {show(text)}; known profiles: {known} "
        "(or give a path to a .json/.yaml profile file)"
    )


def dumps_profile(obj: Any, indent: int = 0) -> str:
    """A profile as JSON with lists of numbers and small flat objects kept on one line, so that
    the shipped files diff readably (``moe-planner profile`` and tools/seed_hwprofile.py)."""
    pad, inner = "  " * indent, "  " * (indent + 1)

    def flat(x: Any) -> bool:
        return not isinstance(x, dict | list)

    if isinstance(obj, dict):
        if all(flat(v) for v in obj.values()) and len(json.dumps(obj)) <= 90:
            return json.dumps(obj, ensure_ascii=False)
        items = [f"{inner}{json.dumps(k)}: {dumps_profile(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list):
        if all(flat(v) for v in obj):
            return json.dumps(obj, ensure_ascii=False)
        items = [f"{inner}{dumps_profile(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(obj, ensure_ascii=False)
