"""GPU planning: roofline estimates of a model's latency, memory fit and throughput.

``cost`` counts FLOPs and bytes per node at bound dims, ``gpus`` holds datasheet figures,
``roofline`` turns both into per-(GPU, precision) estimates. The estimates are not validated
on real hardware.
"""

from __future__ import annotations

from modelpress.plan.cost import ModelCost, NodeCost, UnknownNode, model_cost
from modelpress.plan.gpus import GPUS, Gpu
from modelpress.plan.roofline import GpuPlan, PlanReport, RooflineParams, plan_model

__all__ = [
    "GPUS",
    "Gpu",
    "GpuPlan",
    "ModelCost",
    "NodeCost",
    "PlanReport",
    "RooflineParams",
    "UnknownNode",
    "model_cost",
    "plan_model",
]
