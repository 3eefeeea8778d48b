"""A deployment pipeline: steps per model input and per model output, declared in YAML.

```yaml
version: 1
inputs:
  image:                      # model input name
    - decode_image: {mode: RGB}
    - resize: {size: 256}
    - center_crop: {size: 224}
    - to_tensor
    - normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
outputs:
  logits:                     # model output name
    - softmax
    - top_k: {k: 5, labels: [cat, dog, ...]}
```

A step is written ``name`` or ``{name: {param: value}}``. The file is read with
``yaml.safe_load`` only (no Python objects), and every step and parameter is validated when the
pipeline is built: an unknown step, a step in the wrong section, a terminal step that is not
last, or a bad parameter raises ``UsageError`` naming its place (``inputs.image[2]``), the step
and the parameter. ``STEPS`` is the one list of steps, in the order of the docs.
"""

from __future__ import annotations

import collections.abc
import difflib
import os
import typing
from pathlib import Path

import numpy as np
import yaml

from modelpress._files import read_small_text
from modelpress.errors import UsageError
from modelpress.pipeline import postprocess, preprocess
from modelpress.pipeline.steps import Step

__all__ = ["MAX_YAML_BYTES", "STEPS", "Pipeline", "make_step"]

STEPS: dict[str, type[Step]] = {
    cls.name: cls
    for cls in (
        preprocess.DecodeImageStep,
        preprocess.ResizeStep,
        preprocess.CenterCropStep,
        preprocess.ToTensorStep,
        preprocess.MinMaxStep,
        preprocess.ZScoreStep,
        preprocess.NormalizeStep,
        preprocess.OneHotStep,
        preprocess.OrdinalStep,
        preprocess.ClipStep,
        preprocess.CastStep,
        postprocess.SoftmaxStep,
        postprocess.SigmoidStep,
        postprocess.ArgmaxStep,
        postprocess.TopKStep,
        postprocess.ThresholdStep,
        postprocess.DiscretizeStep,
        postprocess.RoundStep,
        postprocess.RescaleStep,
    )
}
# A pipeline file holds parameters and label lists, never data: anything larger is a mistake.
MAX_YAML_BYTES = 16 * 2**20
_SECTIONS = {"inputs": "pre", "outputs": "post"}

Chains = dict[str, list[Step]]


def make_step(entry: object, *, stage: str = "any", where: str = "step") -> Step:
    """Build one step from its YAML form: ``name`` or ``{name: {params}}``.

    Args:
        entry: The parsed YAML entry.
        stage: ``pre`` or ``post`` to refuse steps of the other stage; ``any`` accepts all.
        where: Its place, for messages (e.g. ``inputs.image[2]``).

    Raises:
        UsageError: malformed entry, unknown step, wrong stage, or bad parameters.
    """
    if isinstance(entry, str):
        name, params = entry, None
    elif isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
    else:
        raise UsageError(f"{where}: a step is written 'name' or {{name: {{param: value}}}}, got {entry!r}")
    cls = STEPS.get(name) if isinstance(name, str) else None
    if cls is None:
        close = difflib.get_close_matches(str(name), STEPS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known steps: {', '.join(STEPS)}"
        raise UsageError(f"{where}: unknown step '{name}'{hint}")
    if stage != "any" and cls.stage not in (stage, "any"):
        other = "outputs (post-processing)" if cls.stage == "post" else "inputs (pre-processing)"
        raise UsageError(f"{where}: step '{name}' belongs under {other}")
    if params is not None and not isinstance(params, dict):
        raise UsageError(f"{where}: the parameters of step '{name}' must be a mapping, got {params!r}")
    try:
        return cls(params)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from e


class Pipeline:
    """Pre-processing per model input and post-processing per model output."""

    def __init__(self, inputs: Chains | None = None, outputs: Chains | None = None) -> None:
        self.inputs: Chains = dict(inputs or {})
        self.outputs: Chains = dict(outputs or {})
        for section, chains in (("inputs", self.inputs), ("outputs", self.outputs)):
            for name, steps in chains.items():
                for position, step in enumerate(steps[:-1]):
                    if step.terminal:
                        raise UsageError(
                            f"{section}.{name}[{position}]: step '{step.name}' returns several arrays and "
                            "must be the last step"
                        )

    @classmethod
    def from_dict(cls, data: object, *, where: str = "pipeline") -> Pipeline:
        """Build a pipeline from its parsed YAML form, validating every step.

        Raises:
            UsageError: unknown keys or steps, a bad parameter, or a malformed section.
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise UsageError(
                f"{where}: must be a mapping with 'inputs' and/or 'outputs', got {type(data).__name__}"
            )
        unknown = sorted(set(map(str, data)) - {"version", "inputs", "outputs"})
        if unknown:
            raise UsageError(
                f"{where}: unknown key '{unknown[0]}'; a pipeline has version, inputs and outputs"
            )
        if data.get("version", 1) != 1:
            raise UsageError(
                f"{where}: version {data['version']!r} is not supported; this modelpress reads version 1"
            )
        chains = {
            section: _chains(data.get(section), section, stage, where) for section, stage in _SECTIONS.items()
        }
        try:
            return cls(chains["inputs"], chains["outputs"])
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from e

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Pipeline:
        """Read a ``pipeline.yaml`` (safe YAML only).

        Raises:
            UsageError: the file is missing, too large, not YAML, or not a valid pipeline.
        """
        file = Path(path)
        return cls.from_text(read_small_text(file, MAX_YAML_BYTES, "pipeline"), where=str(file))

    @classmethod
    def from_text(cls, text: str, *, where: str = "pipeline") -> Pipeline:
        """Parse YAML text (``yaml.safe_load``) into a pipeline.

        Raises:
            UsageError: not YAML, or not a valid pipeline.
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from e
        return cls.from_dict(data, where=where)

    def to_dict(self) -> dict[str, object]:
        """The YAML form: ``from_dict(p.to_dict())`` rebuilds an equal pipeline."""
        data: dict[str, object] = {"version": 1}
        for section, chains in (("inputs", self.inputs), ("outputs", self.outputs)):
            if chains:
                data[section] = {name: [step.to_dict() for step in steps] for name, steps in chains.items()}
        return data

    def to_yaml(self) -> str:
        """The pipeline as YAML text."""
        text: str = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        return text

    def preprocess(self, raw: collections.abc.Mapping[str, object]) -> dict[str, np.ndarray]:
        """Turn raw inputs into model feeds; inputs without steps pass through as arrays.

        Raises:
            UsageError: an input with steps is missing, or a step cannot process its data
                (the message names the input, the step's position and name).
        """
        missing = sorted(set(self.inputs) - set(raw))
        if missing:
            raise UsageError(
                f"no raw input '{missing[0]}'; the pipeline pre-processes {', '.join(self.inputs)}"
            )
        feeds: dict[str, np.ndarray] = {}
        for name, value in raw.items():
            steps = self.inputs.get(name, [])
            result = _run(steps, value, f"inputs.{name}")
            if steps and isinstance(result, list):
                raise UsageError(
                    f"inputs.{name}: the steps leave {len(result)} images of different sizes; add resize "
                    "or center_crop so that they stack into one tensor"
                )
            feeds[name] = np.asarray(result)
        return feeds

    def postprocess(self, outputs: collections.abc.Mapping[str, object]) -> dict[str, np.ndarray]:
        """Turn model outputs into results; a terminal step's arrays are named ``OUTPUT.key``.

        Outputs without steps pass through; an output with steps that the model did not
        return is an error.

        Raises:
            UsageError: as for ``preprocess``.
        """
        missing = sorted(set(self.outputs) - set(outputs))
        if missing:
            raise UsageError(
                f"the model returned no output '{missing[0]}' (it returned "
                f"{', '.join(outputs) or 'nothing'}); fix the output names in the pipeline"
            )
        results: dict[str, np.ndarray] = {}
        for name, value in outputs.items():
            result = _run(self.outputs.get(name, []), value, f"outputs.{name}")
            if isinstance(result, dict):
                results.update({f"{name}.{key}": array for key, array in result.items()})
            else:
                results[name] = np.asarray(result)
        return results

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Pipeline(inputs={self.inputs!r}, outputs={self.outputs!r})"


def _chains(section: object, key: str, stage: str, where: str) -> Chains:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise UsageError(f"{where}: '{key}' must map names to lists of steps, got {type(section).__name__}")
    chains: Chains = {}
    for name, entries in section.items():
        if entries is None:
            entries = []
        if not isinstance(name, str) or not isinstance(entries, list):
            raise UsageError(f"{where}: {key}.{name} must be a list of steps, got {entries!r}")
        chains[name] = [
            make_step(entry, stage=stage, where=f"{where}: {key}.{name}[{i}]")
            for i, entry in enumerate(entries)
        ]
    return chains


def _run(steps: list[Step], value: object, where: str) -> typing.Any:
    for position, step in enumerate(steps):
        try:
            value = step.apply(value)
        except UsageError as e:
            raise UsageError(f"{where}[{position}]: {e}") from e
        except (ValueError, TypeError, IndexError) as e:  # data numpy cannot broadcast or convert
            raise UsageError(f"{where}[{position}]: step '{step.name}' cannot process the data: {e}") from e
    return value
