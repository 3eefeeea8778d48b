"""Calibration: run the float model on sample data and observe the activations to quantize.

The tensors to observe (``QuantPlan.calibration_targets``) become extra graph outputs for the
duration of one onnxruntime session (optimizations off, so every tensor still exists and
has its float value); the graph is restored afterwards. Batches are run one at a time and
each observed tensor updates its own observer, then the batch and its outputs are dropped:
memory is one batch plus a fixed-size observer per tensor, whatever the number of samples
(``Observer.state_nbytes`` is constant). Graph inputs are observed straight from the feeds.

Which observer and which range (the policy, from ``QuantSpec.calibrator``):
``minmax`` -> ``MinMaxObserver``; ``percentile`` / ``entropy`` / ``mse`` -> a
``HistogramObserver`` of ``spec.histogram_bins`` bins and its method of that name.
"""

from __future__ import annotations

import collections.abc

import numpy as np
import onnx_ir as ir

from modelpress.errors import CalibrationError
from modelpress.quantize.observers import HistogramObserver, MinMaxObserver, Observer
from modelpress.quantize.plan import build_plan
from modelpress.quantize.spec import QuantSpec
from modelpress.runtime.session import create_session, run_session

__all__ = ["calibrate", "make_observer", "observe", "observer_range"]

Feeds = collections.abc.Mapping[str, np.ndarray]


def make_observer(spec: QuantSpec) -> Observer:
    """A fresh observer for ``spec.calibrator``."""
    if spec.calibrator == "minmax":
        return MinMaxObserver()
    return HistogramObserver(spec.histogram_bins)


def observer_range(observer: Observer, spec: QuantSpec) -> tuple[float, float]:
    """The ``(min, max)`` range ``spec.calibrator`` picks from ``observer``."""
    if isinstance(observer, MinMaxObserver) or spec.calibrator == "minmax":
        return observer.range()
    if spec.calibrator == "percentile":
        return observer.percentile(spec.percentile)
    if spec.calibrator == "entropy":
        return observer.entropy()
    return observer.mse()


def observe(
    model: ir.Model,
    samples: collections.abc.Iterable[Feeds],
    targets: collections.abc.Sequence[str],
    spec: QuantSpec,
    *,
    on_batch: collections.abc.Callable[[int], None] | None = None,
) -> dict[str, Observer]:
    """Run ``model`` on every batch of ``samples`` and observe the ``targets`` tensors.

    Args:
        model: The float model; its graph outputs are extended for the session and restored.
        samples: Feed dicts (one sample or a batch each); iterated once, never stored.
        targets: Names of float tensors (graph inputs or node outputs) to observe.
        spec: Chooses the observer kind.
        on_batch: Called after each batch with its number of samples (progress bars).

    Returns:
        One observer per target name.

    Raises:
        CalibrationError: ``samples`` is empty, a target is unknown, or an observed tensor
            holds NaN/Inf (the model overflows on the data).
    """
    inputs = {v.name for v in model.graph.inputs}
    values = _values_by_name(model.graph, set(targets) - inputs)
    observers = {name: make_observer(spec) for name in targets}
    fetched = [name for name in targets if name not in inputs]
    session = _session_with_outputs(model, [values[name] for name in fetched])
    batches = 0
    for batch, feeds in enumerate(samples):
        outputs = run_session(session, feeds, fetched) if fetched else {}
        for name in targets:
            array = np.asarray(feeds[name] if name in inputs else outputs[name])
            if not np.isfinite(array).all():
                raise CalibrationError(
                    f"tensor '{name}' holds NaN/Inf on calibration batch {batch}: the float model "
                    "overflows on this data; check the data's preprocessing or exclude the node"
                )
            observers[name].update(array)
        batches += 1
        if on_batch is not None:
            on_batch(len(next(iter(feeds.values()))) if feeds else 0)
    if batches == 0:
        raise CalibrationError("no calibration samples were given; pass a folder with at least one sample")
    return observers


def calibrate(
    model: ir.Model,
    samples: collections.abc.Iterable[Feeds],
    spec: QuantSpec,
    *,
    on_batch: collections.abc.Callable[[int], None] | None = None,
) -> dict[str, tuple[float, float]]:
    """The calibrated ``(min, max)`` of every activation ``spec`` quantizes in ``model``.

    ``model`` must carry inferred dtypes (``build_plan`` reads them); see ``observe``.
    """
    targets = build_plan(model, spec).calibration_targets
    observers = observe(model, samples, targets, spec, on_batch=on_batch)
    return {name: observer_range(observers[name], spec) for name in targets}


def _values_by_name(graph: ir.Graph, names: set[str]) -> dict[str, ir.Value]:
    found = {}
    for node in graph:
        for out in node.outputs:
            if out.name in names:
                found[out.name] = out
    missing = sorted(names - set(found))
    if missing:
        raise CalibrationError(
            f"cannot observe tensor(s) {', '.join(missing)}: no node of the main graph produces them"
        )
    return found


def _session_with_outputs(model: ir.Model, extra: list[ir.Value]) -> object:
    """A session whose outputs include ``extra``; the model's outputs are restored at once."""
    outputs = model.graph.outputs
    original = list(outputs)
    for value in extra:
        if not value.is_graph_output():  # typed: the plan observes only float32 tensors
            outputs.append(value)
    try:
        return create_session(model, level="disable")
    finally:
        outputs.clear()
        outputs.extend(original)
