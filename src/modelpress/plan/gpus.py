"""Datasheet figures of the GPUs the planner knows: dense peak tensor throughput, memory.

Every peak is the vendor's *dense* figure (no 2:4 structured sparsity): NVIDIA's datasheets
print the sparse figure with an asterisk, twice the dense one, and the dense one is what a
normal model gets. Peaks are theoretical: real kernels reach a fraction of them (that is
what ``roofline``'s efficiency parameters stand for). Units: TFLOPS (TOPS for int8),
memory bandwidth in TB/s (10**12 bytes/s), memory in GB (10**9 bytes), as the datasheets.

Precisions: ``fp32`` means fp32 models run on TF32 tensor cores (the datasheet's TF32
figure; plain fp32 CUDA-core peaks are far lower); ``fp16`` and ``bf16`` share one peak;
``fp8`` exists on Hopper (H100/H200) and Ada (L40S) only, not on the A100; ``int8`` is TOPS.

Sources: the NVIDIA datasheet named in each entry. The NVIDIA PDFs themselves could not be
fetched while writing this table; every figure was cross-checked against the secondary
pages named in ``checked_against``, and a figure those pages did not confirm is listed in
``unverified``.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from modelpress.errors import UsageError

__all__ = ["ELEMENT_BYTES", "GPUS", "PEAK_NOTE", "PRECISIONS", "Gpu", "find_gpu"]

# Bytes per floating-point element of each precision the planner knows.
ELEMENT_BYTES: types.MappingProxyType[str, int] = types.MappingProxyType(
    {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
)
PRECISIONS: tuple[str, ...] = tuple(ELEMENT_BYTES)
PEAK_NOTE = (
    "datasheet peaks (dense, no sparsity, boost clock) are not reached in practice; "
    "well-tuned large GEMMs reach roughly 60-80 % of them"
)


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU's datasheet figures.

    Attributes:
        name: Short name used on the command line (``H100``).
        model: Full product name and form factor.
        peak_tflops: Dense peak tensor throughput per precision (TOPS for int8); a precision
            the GPU lacks is absent.
        bandwidth_tb_s: Memory bandwidth, TB/s.
        memory_gb: Memory, GB.
        source: The vendor datasheet the figures come from (name and URL).
        checked_against: Secondary pages the figures were cross-checked against.
        unverified: Figures the cross-check did not confirm.
        note: Caveat on the peaks.
    """

    name: str
    model: str
    peak_tflops: types.MappingProxyType[str, float]
    bandwidth_tb_s: float
    memory_gb: float
    source: str
    checked_against: tuple[str, ...]
    unverified: tuple[str, ...] = ()
    note: str = PEAK_NOTE

    def has_precision(self, precision: str) -> bool:
        """Whether the GPU's tensor cores support ``precision``."""
        return precision in self.peak_tflops

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)} | {
            "peak_tflops": dict(self.peak_tflops),
            "checked_against": list(self.checked_against),
            "unverified": list(self.unverified),
        }


def _peaks(tf32: float, fp16: float, fp8: float | None, int8: float) -> types.MappingProxyType[str, float]:
    peaks = {"fp32": tf32, "fp16": fp16, "bf16": fp16, "int8": int8}
    if fp8 is not None:
        peaks["fp8"] = fp8
    return types.MappingProxyType(peaks)


# H100 SXM dense: TF32 494.7, FP16/BF16 989.4, FP8 1978.9, INT8 1978.9 (datasheet: 989*, 1979*,
# 3958*, 3958*, "* with sparsity", dense half). H200 SXM has the same GH100 compute.
_HOPPER = _peaks(tf32=494.7, fp16=989.4, fp8=1978.9, int8=1978.9)

GPUS: types.MappingProxyType[str, Gpu] = types.MappingProxyType(
    {
        "L40S": Gpu(
            name="L40S",
            model="NVIDIA L40S (PCIe, 48 GB GDDR6)",
            # Datasheet: TF32 183 | 366*, BF16/FP16 362.05 | 733*, FP8 733 | 1,466*.
            peak_tflops=_peaks(tf32=183.0, fp16=362.05, fp8=733.0, int8=733.0),
            bandwidth_tb_s=0.864,
            memory_gb=48.0,
            source="NVIDIA L40S datasheet (nvidia.com; URL not confirmed here)",
            checked_against=(
                "https://www.mullet.se/product.html?product_id=355414 (L40/L40S spec table)",
                "https://omegaco.ae/shop/gpu-cards-edge-ai/nvidia-l40s",
            ),
            unverified=("int8 733 TOPS: the cross-check pages list L40S INT8 blank; assumed equal to FP8",),
        ),
        "A100": Gpu(
            name="A100",
            model="NVIDIA A100 80GB SXM4 (HBM2e)",
            # Datasheet: TF32 156 | 312*, BF16/FP16 312 | 624*, INT8 624 | 1248*; no FP8.
            peak_tflops=_peaks(tf32=156.0, fp16=312.0, fp8=None, int8=624.0),
            bandwidth_tb_s=2.039,
            memory_gb=80.0,
            source=(
                "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column, https://www.nvidia.com/content/"
                "dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
            ),
            checked_against=(
                "https://glennklockwood.com/garden/processors/A100",
                "https://www.thundercompute.com/blog/nvidia-a100-specs-full-guide",
            ),
        ),
        "H100": Gpu(
            name="H100",
            model="NVIDIA H100 SXM5 (80 GB HBM3)",
            peak_tflops=_HOPPER,
            bandwidth_tb_s=3.35,
            memory_gb=80.0,
            source="NVIDIA H100 Tensor Core GPU datasheet, H100 SXM (nvidia.com; URL not confirmed)",
            checked_against=(
                "https://glennklockwood.com/garden/processors/h100",
                "https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html",
            ),
        ),
        "H200": Gpu(
            name="H200",
            model="NVIDIA H200 SXM (141 GB HBM3e)",
            peak_tflops=_HOPPER,
            bandwidth_tb_s=4.8,
            memory_gb=141.0,
            source="NVIDIA H200 Tensor Core GPU datasheet, H200 SXM (nvidia.com; URL not confirmed)",
            checked_against=(
                "https://lzwjava.github.io/nvidia-h200-gpu-specs-en",
                "https://ai-hpc.github.io/ai-hardware-engineer-roadmap/ (8x H200 snapshot)",
            ),
            unverified=(
                "int8 1978.9 TOPS: taken from the H100 (same GH100 compute), not seen on an H200 page",
            ),
        ),
    }
)


def find_gpu(name: str) -> Gpu:
    """The table entry for ``name`` (case-insensitive).

    Raises:
        UsageError: the name is not in the table.
    """
    for key, gpu in GPUS.items():
        if key.lower() == name.strip().lower():
            return gpu
    raise UsageError(f"unknown GPU '{name}'; known: {', '.join(GPUS)}")
