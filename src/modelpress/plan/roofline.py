"""Roofline estimates of a model's latency, memory fit and throughput on datasheet GPUs.

Per node, at a given GPU and precision::

    time = max(FLOPs / (peak * compute_efficiency), bytes / (bandwidth * memory_efficiency))
           + launch_overhead

summed over the costed nodes (``plan.cost``). Assumptions, all parameters of
``RooflineParams`` and all unmeasured:

* ``compute_efficiency`` 0.6 and ``memory_efficiency`` 0.8: the fraction of the datasheet
  peak a good kernel reaches. One value for every op: element-wise ops are costed against the
  tensor-core peak too, which hardly matters since their memory term dominates by far.
* ``launch_overhead_s`` 5 µs per kernel: every costed node and every uncosted (unknown)
  node is one kernel; static shape arithmetic is none. No fusion is modelled, so a runtime
  that fuses (TensorRT, ORT's fused attention/LayerNorm) will beat these figures.
* Batch scaling: FLOPs and activation bytes scale linearly with the batch, weight bytes do
  not; that is how latency at another batch (the max batch) is derived from one costing.
* Memory: weights + batch x activations (the peak of the liveness walk, per sample) must
  fit in ``(1 - memory_headroom)`` of the GPU's memory; the headroom (10 %) stands for the
  CUDA context, kernel workspaces and fragmentation. The max batch is capped at
  ``max_batch_cap`` (4096), a planner limit, not the GPU's.

Nothing here has been checked against a real GPU: these are estimates.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
from typing import Any

import onnx_ir as ir

from modelpress.errors import UsageError
from modelpress.plan import gpus as gpu_table
from modelpress.plan._shapes import bind_and_infer
from modelpress.plan.cost import ModelCost, NodeCost, cost_inferred

__all__ = ["ESTIMATE_NOTE", "GpuPlan", "NodeTime", "PlanReport", "RooflineParams", "plan_model"]

ESTIMATE_NOTE = (
    "Roofline estimates from datasheet peaks and assumed efficiencies; not validated on real hardware."
)


@dataclasses.dataclass(frozen=True)
class RooflineParams:
    """The assumptions of the estimate (see the module docstring for the defaults' meaning)."""

    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    launch_overhead_s: float = 5e-6
    memory_headroom: float = 0.1
    max_batch_cap: int = 4096

    def check(self) -> None:
        """Raise UsageError on out-of-range values."""
        for name in ("compute_efficiency", "memory_efficiency"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise UsageError(f"{name} {value} must be in (0, 1]")
        if self.launch_overhead_s < 0:
            raise UsageError(f"launch_overhead_s {self.launch_overhead_s} must be >= 0")
        if not 0.0 <= self.memory_headroom < 1.0:
            raise UsageError(f"memory_headroom {self.memory_headroom} must be in [0, 1)")
        if self.max_batch_cap < 1:
            raise UsageError(f"max_batch_cap {self.max_batch_cap} must be >= 1")


@dataclasses.dataclass(frozen=True)
class NodeTime:
    """Estimated time of one node and what bounds it."""

    name: str
    op_type: str
    seconds: float
    bound: str


@dataclasses.dataclass(frozen=True)
class GpuPlan:
    """The estimate for one (GPU, precision).

    Attributes:
        gpu: GPU name. precision: precision name.
        supported: False when the GPU lacks the precision (every estimate is then None).
        note: Why it is unsupported, or caveats of this row.
        batch: The batch the latency is for.
        latency_s: Estimated latency of one inference at ``batch``.
        compute_s / memory_s / overhead_s: The latency split by what bounds each node.
        bound: ``compute``, ``memory`` or ``launch overhead``, the largest of the three.
        memory_needed_gb: Weights + activations at ``batch``.
        fits: Whether that fits in the GPU's memory less the headroom.
        max_batch: Largest batch that fits (capped), None when the model's batch is static.
        throughput_per_s: Samples per second at ``max_batch`` (at ``batch`` if static).
        top_nodes: The five slowest nodes at ``batch``.
    """

    gpu: str
    precision: str
    supported: bool
    note: str = ""
    batch: int = 1
    latency_s: float | None = None
    compute_s: float | None = None
    memory_s: float | None = None
    overhead_s: float | None = None
    bound: str | None = None
    memory_needed_gb: float | None = None
    fits: bool | None = None
    max_batch: int | None = None
    throughput_per_s: float | None = None
    top_nodes: list[NodeTime] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class PlanReport:
    """Costs per precision, one ``GpuPlan`` per (GPU, precision), and the assumptions."""

    batch: int
    dims: dict[str, int]
    costs: dict[str, ModelCost]
    plans: list[GpuPlan]
    params: RooflineParams
    gpus: list[gpu_table.Gpu]
    note: str = ESTIMATE_NOTE

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict; per-node cost rows are left out (use ``ModelCost``)."""
        costs = {}
        for precision, cost in self.costs.items():
            data = cost.to_json()
            data.pop("nodes")
            costs[precision] = data
        return {
            "note": self.note,
            "batch": self.batch,
            "dims": self.dims,
            "assumptions": dataclasses.asdict(self.params),
            "costs": costs,
            "plans": [dataclasses.asdict(plan) for plan in self.plans],
            "gpus": [gpu.to_json() for gpu in self.gpus],
        }


def _node_terms(node: NodeCost, scale: float, peak_flops: float, bandwidth: float) -> tuple[float, float]:
    flops = node.flops * scale
    moved = (node.input_bytes + node.output_bytes) * scale + node.weight_bytes
    return flops / peak_flops, moved / bandwidth


def _times(
    cost: ModelCost, scale: float, gpu: gpu_table.Gpu, precision: str, params: RooflineParams
) -> tuple[list[NodeTime], float, float, float]:
    peak = gpu.peak_tflops[precision] * 1e12 * params.compute_efficiency
    bandwidth = gpu.bandwidth_tb_s * 1e12 * params.memory_efficiency
    times, compute_s, memory_s = [], 0.0, 0.0
    for node in cost.nodes:
        compute, memory = _node_terms(node, scale, peak, bandwidth)
        if compute > memory:
            compute_s += compute
        else:
            memory_s += memory
        seconds = max(compute, memory) + params.launch_overhead_s
        times.append(NodeTime(node.name, node.op_type, seconds, "compute" if compute > memory else "memory"))
    overhead_s = (len(cost.nodes) + len(cost.unknown)) * params.launch_overhead_s
    return times, compute_s, memory_s, overhead_s


def _plan_one(
    cost: ModelCost, batch: int, gpu: gpu_table.Gpu, precision: str, params: RooflineParams
) -> GpuPlan:
    if not gpu.has_precision(precision):
        return GpuPlan(gpu.name, precision, False, note=f"{gpu.name} has no {precision} tensor cores")
    times, compute_s, memory_s, overhead_s = _times(cost, 1.0, gpu, precision, params)
    latency = compute_s + memory_s + overhead_s
    parts = {"compute": compute_s, "memory": memory_s, "launch overhead": overhead_s}
    usable = gpu.memory_gb * 1e9 * (1.0 - params.memory_headroom)
    needed = cost.weight_bytes + cost.peak_activation_bytes
    notes = [f"{len(cost.unknown)} node(s) not costed: latency is a lower bound"] if cost.unknown else []
    max_batch: int | None = None
    throughput = batch / latency if latency > 0 else None
    if cost.batch is None:
        notes.append("static batch: max batch not estimated")
    else:
        per_sample = cost.peak_activation_bytes / batch
        room = usable - cost.weight_bytes
        if per_sample <= 0:
            max_batch = params.max_batch_cap if room >= 0 else 0
        else:
            max_batch = max(0, min(params.max_batch_cap, math.floor(room / per_sample)))
        throughput = None
        if max_batch > 0:
            _, c_s, m_s, o_s = _times(cost, max_batch / batch, gpu, precision, params)
            throughput = max_batch / (c_s + m_s + o_s)
    return GpuPlan(
        gpu=gpu.name,
        precision=precision,
        supported=True,
        note="; ".join(notes),
        batch=batch,
        latency_s=latency,
        compute_s=compute_s,
        memory_s=memory_s,
        overhead_s=overhead_s,
        bound=max(parts, key=lambda k: parts[k]),
        memory_needed_gb=needed / 1e9,
        fits=needed <= usable,
        max_batch=max_batch,
        throughput_per_s=throughput,
        top_nodes=sorted(times, key=lambda t: -t.seconds)[:5],
    )


def _static_batch(model: ir.Model) -> int:
    """The leading dim of the first graph input with a static one (1 when there is none)."""
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or not value.shape:
            continue
        dim = value.shape[0]
        if isinstance(dim, int) and dim > 0:
            return dim
    return 1


def plan_model(
    model: ir.Model,
    gpus: collections.abc.Sequence[str] = tuple(gpu_table.GPUS),
    precisions: collections.abc.Sequence[str] = ("fp16",),
    dims: collections.abc.Mapping[str, int] | None = None,
    *,
    batch: int = 1,
    params: RooflineParams | None = None,
) -> PlanReport:
    """Estimate ``model`` on every (GPU, precision) pair by the roofline model.

    Args:
        model: The model; it is not modified.
        gpus: GPU names from ``plan.gpus.GPUS`` (case-insensitive).
        precisions: Names from ``plan.gpus.PRECISIONS``; a precision a GPU lacks gives an
            unsupported row, not an error.
        dims: Sizes of dynamic dims by name (``{"sequence": 128}``; ``"*"`` for the rest).
        batch: Size of the dynamic leading dim of the graph inputs.
        params: Efficiencies, launch overhead and memory headroom (defaults stated there).

    Raises:
        UsageError: an unknown GPU or precision, a bad size or parameter.
    """
    params = params or RooflineParams()
    params.check()
    chosen = [gpu_table.find_gpu(name) for name in gpus]
    names = [p.strip().lower() for p in precisions]
    for name in names:
        if name not in gpu_table.ELEMENT_BYTES:
            raise UsageError(f"unknown precision '{name}'; known: {', '.join(gpu_table.PRECISIONS)}")
    if not chosen or not names:
        raise UsageError("give at least one GPU and one precision")
    inferred, bound = bind_and_infer(model, dims, batch=batch)
    by_size: dict[int, ModelCost] = {}
    costs: dict[str, ModelCost] = {}
    for name in names:
        size = gpu_table.ELEMENT_BYTES[name]
        if size not in by_size:
            by_size[size] = cost_inferred(inferred, bound, size)
        costs[name] = by_size[size]
    effective_batch = bound.batch if bound.batch is not None else _static_batch(model)
    plans = [_plan_one(costs[p], effective_batch, gpu, p, params) for gpu in chosen for p in names]
    return PlanReport(effective_batch, dict(bound.sizes), costs, plans, params, chosen)
